"""One vocabulary of case states (errors.State), one exception that carries a state, and one one-at-a-time pool."""

import json
import pickle

import pytest

from quantbench import gate
from quantbench.bench.one_at_a_time import OneAtATime
from quantbench.errors import CaseStopped, Crashed, OutOfMemory, State, TooSlow, Unsupported, stopped
from quantbench.report import findings, guide

pytestmark = pytest.mark.stack_independent


def test_every_case_state_is_known_to_the_gate_and_the_report_from_the_one_enum():
    """The gate's BROKEN, its --fail-on vocabulary, the guide's NEWS and the findings' flags are read from State:
    a new state is added in one place (3ae1c25 kept each set by hand in six files)."""
    assert set(gate.BROKEN) == {"crashed", "too-slow", "requests-failed"}
    assert {s.value for s in State} - {"ok", "interrupted"} <= set(gate.STATES)
    assert set(gate.BROKEN) <= set(guide.NEWS)
    assert findings.STATED_FLAGS == {"crashed": "CRASHED", "too-slow": "TOO SLOW"}
    assert [s for s in State if s.fails_case] == [State.INVALID_INPUT, State.GUARD_FAILED]
    assert json.loads(json.dumps({"state": State.TOO_SLOW})) == {"state": "too-slow"}  # stored as its string
    assert f"{State.OOM}: why" == "oom: why" and State("crashed") is State.CRASHED


def test_a_crash_or_a_timeout_is_no_kind_of_unsupported():
    """3ae1c25: Crashed and TooSlow subclassed Unsupported, so every `except Unsupported` caught a crash too."""
    for exc in (Crashed("died", kernel="k"), TooSlow("late")):
        assert isinstance(exc, CaseStopped) and not isinstance(exc, Unsupported)
    with pytest.raises(Crashed):
        try:
            raise Crashed("SIGABRT in the kernel")
        except Unsupported:  # must not swallow it
            pytest.fail("a crash was caught as unsupported")


@pytest.mark.parametrize("exc", [Unsupported("needs CUDA"), OutOfMemory("CUDA out of memory", "marlin"),
                                 Crashed("SIGSEGV", "gemv_4bit"), TooSlow("round 3 of 5"),
                                 CaseStopped(State.REQUESTS_FAILED, "2 of 8 failed", fail=True),
                                 CaseStopped("invalid-input", "bad prompt. Fix: shorten it")])
def test_a_stopped_case_crosses_a_process_pipe_with_its_state_reason_and_kernel(exc):
    back = pickle.loads(pickle.dumps(exc))
    assert (type(back), back.state, back.reason, back.kernel, back.fail) == \
           (type(exc), exc.state, exc.reason, exc.kernel, exc.fail)
    again = stopped(exc.state.value, exc.reason, exc.kernel)
    assert type(again) is type(exc) and again.state is exc.state


def test_the_pool_keeps_one_at_a_time_and_remembers_a_stated_start():
    started, stopped_values = [], []

    def start(key):
        started.append(key)
        if key == "refused":
            raise Unsupported("no kernel here")
        if key == "flaky":
            raise OSError("port in use")
        return f"model {key}"

    pool = OneAtATime(start, stopped_values.append)
    assert pool.get("a") == "model a" and pool.get("a") == "model a" and started == ["a"]
    assert pool.get("b") == "model b" and stopped_values == ["model a"]  # a stopped before b started
    for _ in range(2):  # a stated start is the key's answer from then on: tried once
        with pytest.raises(Unsupported, match="no kernel here"):
            pool.get("refused")
    assert started.count("refused") == 1 and stopped_values == ["model a", "model b"]
    for _ in range(2):  # any other error is not remembered: the next case tries again
        with pytest.raises(OSError):
            pool.get("flaky")
    assert started.count("flaky") == 2
    assert pool.get("c") == "model c" and pool.holds("c")
    pool.fail("c", Crashed("not run: the process died in c-b1"))
    assert not pool.holds("c") and stopped_values[-1] == "model c"
    with pytest.raises(Crashed, match="died in c-b1"):
        pool.get("c")
