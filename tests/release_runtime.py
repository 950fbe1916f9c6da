"""A stand-in engine for the bisection tests (``--plugin tests.release_runtime``): transformers' eager runtime in a
child process whose every decode and prefill call asks the installed release of the fake library ``qbslow`` for
its work (tests/test_bisect.py builds its releases as wheels: some slower, one that will not install beside the
stack, one that aborts)."""

from quantbench.runtimes.base import register
from quantbench.runtimes.eager import EagerDecoder, Transformers


class ReleaseDecoder(EagerDecoder):
    def prefill(self, ids):
        import qbslow
        qbslow.work()
        return super().prefill(ids)

    def decode(self, state, n, timer=None):
        import qbslow
        qbslow.work()
        return super().decode(state, n, timer)


@register
class ReleaseRuntime(Transformers):
    name = "qbslow-release"
    description = "TEST ONLY: eager transformers in a child process, each call doing the fake library's work"
    format_suffix = "@qbslow"
    isolate = True

    def decoder(self, model, device, dtype):
        return ReleaseDecoder(model)
