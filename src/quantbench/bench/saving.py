"""What pytest-benchmark writes, made safe to lose a process in the middle of: its --benchmark-json written
atomically (a temp file beside it, then a rename: a full disk or a kill leaves the old file or none, never half of
one), and a case cut off inside its rounds (Ctrl-C) left out of its JSON instead of crashing the writer
(pytest-benchmark's statistics take min() of the rounds: "min() arg is an empty sequence", and the whole run was
lost). Both are registered on pytest-benchmark's own session object, nothing of it copied."""

from __future__ import annotations

import os
import signal
import threading
import types
from pathlib import Path

import pytest


def atomic_save_json(session, output_json) -> None:
    """pytest-benchmark's ``save_json``, atomically; a write that fails says so in one line (the run's finished
    cases stay in its journal) instead of a traceback."""
    from pytest_benchmark.utils import safe_dumps
    path = Path(str(session.json))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            out.write(safe_dumps(output_json, ensure_ascii=True, indent=4).encode())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # its folder is not there or not a folder: no temp file either
        session.logger.warning(f"quantbench: --benchmark-json {path} NOT written ({exc.strerror or exc}): the "
                               "cases this run finished are in its journal (see below)")
        return
    session.logger.info(f"Wrote benchmark data in: {path}", purple=True)


class SafeSaving:
    """A pytest plugin object: installs the atomic writer when the session starts, notes a Ctrl-C, and before
    pytest-benchmark saves (its own sessionfinish wrapper runs after this one's first half) drops the cases that
    have no round."""

    def __init__(self, config):
        self.config = config

    def pytest_keyboard_interrupt(self, excinfo):
        self.config.stash[STOPPED] = CTRL_C

    def pytest_sessionstart(self, session):
        bench = getattr(session.config, "_benchmarksession", None)
        if bench is not None and bench.json:
            bench.save_json = types.MethodType(atomic_save_json, bench)
        if threading.current_thread() is threading.main_thread():
            self.previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def pytest_unconfigure(self, config):
        if getattr(self, "previous_sigint", None) is not None:
            signal.signal(signal.SIGINT, self.previous_sigint)

    def _on_sigint(self, signum, frame):
        """Ctrl-C noted first, then Python's own KeyboardInterrupt. Raised inside a finalizer (a __del__ or a
        weakref callback that a torch op's garbage collection ran), Python prints and swallows it and the run
        would go on as if nothing was pressed: the next case then does not start (pytest_runtest_protocol)."""
        self.config.stash[STOPPED] = CTRL_C
        signal.default_int_handler(signum, frame)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item, nextitem):
        if STOPPED in self.config.stash:
            raise KeyboardInterrupt  # a Ctrl-C that a finalizer swallowed: stop here, as pytest does on one

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_sessionfinish(self, session, exitstatus):
        bench = getattr(session.config, "_benchmarksession", None)
        if bench is not None:
            cut = [b for b in bench.benchmarks if not getattr(getattr(b, "stats", None), "data", None)]
            if cut:
                bench.benchmarks[:] = [b for b in bench.benchmarks if b not in cut]
                session.config.stash.setdefault(CUT_OFF, []).extend(b.fullname for b in cut)
        yield


CUT_OFF = pytest.StashKey[list]()
STOPPED = pytest.StashKey[str]()
CTRL_C = "interrupted by Ctrl-C (KeyboardInterrupt): these are the cases it finished"


def interruption(config, case_ids: list[str], benchmarks: list[dict], states: list[dict]) -> dict | None:
    """The run's ``interrupted`` section when it stopped early: why, the case cut off inside its rounds, and the
    cases it never reached; None for a run that ended."""
    reason = config.stash.get(STOPPED, None)
    if reason is None:
        return None
    cut = config.stash.get(CUT_OFF, [])
    ended = {b.get("fullname") for b in benchmarks} | {s.get("nodeid") for s in states} | set(cut)
    return {"reason": reason, "cut_off": cut, "not_reached": [c for c in case_ids if c not in ended]}
