"""A stand-in engine for the isolation tests (loaded with ``-p tests.fault_runtime``): transformers' eager
runtime in a child process, whose decode at batch QUANTBENCH_FAULT_BATCH (default 2) aborts, is killed
(SIGKILL, as the OOM killer does) or hangs, as QUANTBENCH_FAULT says."""

import os
import signal
import time

from quantbench.runtimes.base import register
from quantbench.runtimes.eager import EagerDecoder, Transformers


def _fault_now(kind: str) -> None:
    if kind == "abort":
        os.abort()
    elif kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "hang":
        time.sleep(3600)


class FaultyDecoder(EagerDecoder):
    def decode(self, state, n, timer=None):
        cache, token = state
        if token.shape[0] == int(os.environ.get("QUANTBENCH_FAULT_BATCH", "2")):
            _fault_now(os.environ.get("QUANTBENCH_FAULT", ""))
        return super().decode(state, n, timer)


@register
class FaultInjection(Transformers):
    name = "fault-injection"
    description = "TEST ONLY: eager transformers in a child process, faulting in decode at one batch"
    format_suffix = "@fault"
    isolate = True

    def decoder(self, model, device, dtype):
        return FaultyDecoder(model)


def decoder_kind(decoder, value):
    """Run in the child by RemoteDecoder.call: the child's own decoder class, and the argument back."""
    return type(decoder).__name__, value
