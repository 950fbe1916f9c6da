"""A stand-in engine whose calls take a known time (loaded with ``-p tests.fixed_work_runtime``): transformers'
eager runtime in a child process, each prefill padded to PREFILL_S and each decode call to DECODE_STEP_S a token
by busy-waiting after the real work. What the suite reads for it is a known answer: a round is PREFILL_S, and a
slowdown injected into the child stretches it by exactly that fraction."""

import time

from quantbench.runtimes.base import register
from quantbench.runtimes.eager import EagerDecoder, Transformers

PREFILL_S = 0.030
DECODE_STEP_S = 0.010


def _pad(start: float, seconds: float) -> None:
    while time.perf_counter() < start + seconds:
        pass


class FixedWorkDecoder(EagerDecoder):
    def prefill(self, ids):
        start = time.perf_counter()
        tokens = super().prefill(ids)
        _pad(start, PREFILL_S)
        return tokens

    def decode(self, state, n, timer=None):
        start = time.perf_counter()
        tokens = super().decode(state, n, timer)
        _pad(start, DECODE_STEP_S * n)
        return tokens


@register
class FixedWork(Transformers):
    name = "fixed-work"
    description = "TEST ONLY: eager transformers in a child process, every call padded to a known time"
    format_suffix = "@fixed"
    isolate = True

    def decoder(self, model, device, dtype):
        return FixedWorkDecoder(model)
