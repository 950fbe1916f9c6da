"""Errors that carry the file at fault and the fix, printed as one line, never a traceback."""

from __future__ import annotations

import re
from enum import StrEnum

# Any scheme a user might write (SQLAlchemy's postgresql+psycopg://, mysql://, ...), and a URL a Path() folded to
# one slash (postgresql+psycopg:/u:pw@...): a password never survives
_PASSWORD_IN_URL = re.compile(r"([A-Za-z][\w.+-]*:/+[^:/@\s]*:)[^@\s]*@")
_PASSWORD_PARAM = re.compile(r"(password=)[^&\s]*")


def redact(text: str) -> str:
    """A text (an argument list, a URL, an error line) with any password in a URL replaced by ***."""
    return _PASSWORD_PARAM.sub(r"\1***", _PASSWORD_IN_URL.sub(r"\1***@", str(text)))


class QuantbenchError(Exception):
    """A user-facing problem: ``path: what is wrong. Fix: what to do``."""

    def __init__(self, path, problem: str, fix: str = ""):
        self.path = str(path) if path is not None else ""
        self.problem = problem
        self.fix = fix
        super().__init__(self.line())

    def line(self) -> str:
        where = f"{self.path}: " if self.path else ""
        fix = f" Fix: {self.fix}" if self.fix else ""
        return redact(f"{where}{self.problem}.{fix}")  # a URL given where a file belongs keeps no password


class BadCheckpoint(QuantbenchError):
    """A model directory that cannot be benchmarked as it is."""


class BadHistory(QuantbenchError):
    """A history file that cannot be read (corrupt, truncated, old schema)."""


class NoBaseline(BadHistory):
    """'latest' / 'previous' found no earlier run to compare with (a first run, not a broken file)."""


class State(StrEnum):
    """How a case ended: the one vocabulary of the suite, the gate and the report (stored in the JSON as its
    string). Each state carries its behaviour, so a new state is added here once."""

    OK = "ok"
    UNSUPPORTED = "unsupported"          # cannot run here (a CUDA-only kernel on a CPU, a library missing)
    OOM = "oom"                          # the device or the host could not hold the case
    CRASHED = "crashed"                  # the process that ran it died
    TOO_SLOW = "too-slow"                # stopped at its time budget
    REQUESTS_FAILED = "requests-failed"  # a server answered some requests with errors
    INVALID_INPUT = "invalid-input"      # the user's input cannot be measured as given (a fix is named)
    GUARD_FAILED = "guard-failed"        # the output is wrong: never timed
    INTERRUPTED = "interrupted"          # the run stopped before the case finished (Ctrl-C, kill, full disk)

    @property
    def broken(self) -> bool:
        """A case that measured in the baseline and ends like this now is a failure, whatever --fail-on says."""
        return self in (State.CRASHED, State.TOO_SLOW, State.REQUESTS_FAILED)

    @property
    def fails_case(self) -> bool:
        """The test fails (a wrong result, an input to fix) rather than skips (what cannot run here)."""
        return self in (State.INVALID_INPUT, State.GUARD_FAILED)

    @property
    def ends_process(self) -> bool:
        """The model or server that ran the case is released: it died, hung, or holds memory it ran out of."""
        return self in (State.OOM, State.CRASHED, State.TOO_SLOW)

    @property
    def flag(self) -> str | None:
        """The guide's flag for a case that ran and stopped (None: the state speaks for itself)."""
        return {State.CRASHED: "CRASHED", State.TOO_SLOW: "TOO SLOW"}.get(self)


class CaseStopped(Exception):
    """The one exception a case ends with when it has no number: its state, the reason in words, and the kernel it
    ran where known. Recorded as the case's state, then the test skips (or fails, ``fail``: by default the
    state's ``fails_case``). The subclasses below only fix the state; a crash or a timeout is no kind of
    'unsupported', so ``except Unsupported`` never catches one."""

    state: State = State.UNSUPPORTED

    def __init__(self, state: State | str, reason: str, kernel: str | None = None, fail: bool | None = None):
        super().__init__(reason)
        self.state, self.reason, self.kernel = State(state), reason, kernel
        self.fail = self.state.fails_case if fail is None else fail

    def __reduce__(self):  # across a process pipe: rebuilt by state, not by the subclass's signature
        return stopped, (self.state.value, self.reason, self.kernel, self.fail)


class _FixedState(CaseStopped):
    def __init__(self, reason: str, kernel: str | None = None):
        super().__init__(type(self).state, reason, kernel)


class Unsupported(_FixedState):
    """This format/kernel cannot run here; the message says why. Stored as a state, not a crash."""

    state = State.UNSUPPORTED


class OutOfMemory(_FixedState):
    state = State.OOM


class Crashed(_FixedState):
    """The process that ran the case died (a native abort, a segfault, the OOM killer): the message
    names the signal and the op on its stack or its last log line."""

    state = State.CRASHED


class TooSlow(_FixedState):
    """The case (or the engine's start) passed its time budget and was stopped: the message says what it
    reached in that time, the budget and the kernel it ran."""

    state = State.TOO_SLOW


_BY_STATE = {cls.state: cls for cls in (Unsupported, OutOfMemory, Crashed, TooSlow)}


def stopped(state: State | str, reason: str, kernel: str | None = None, fail: bool | None = None) -> CaseStopped:
    """The exception for ``state`` (its named class where it has one, so ``except Crashed`` still works)."""
    state = State(state)
    exc = _BY_STATE[state](reason, kernel) if state in _BY_STATE else CaseStopped(state, reason, kernel)
    if fail is not None:
        exc.fail = fail
    return exc


def first_line(exc: BaseException, limit: int = 300, default: str = "") -> str:
    """The first line of an exception's message, cut to ``limit`` (``default`` when it has none):
    what a stated reason quotes of a library's error."""
    return (str(exc).strip().splitlines() or [default])[0][:limit]


class HistoryUnavailable(QuantbenchError):
    """A history store that cannot be used right now (a database that cannot be reached, a refused
    login, a schema newer than this quantbench): the run's JSON is kept and stored later."""
