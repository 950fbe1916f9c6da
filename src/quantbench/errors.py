"""Errors that carry the file at fault and the fix, printed as one line, never a traceback."""

from __future__ import annotations

import re

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


class Unsupported(Exception):
    """This format/kernel cannot run here; the message says why. Stored as a state, not a crash."""

    state = "unsupported"


class OutOfMemory(Unsupported):
    state = "oom"


class Crashed(Unsupported):
    """The process that ran the case died (a native abort, a segfault, the OOM killer): the message
    names the signal and the op on its stack or its last log line."""

    state = "crashed"


class TooSlow(Unsupported):
    """The case (or the engine's start) passed its time budget and was stopped: the message says what it
    reached in that time, the budget and the kernel it ran."""

    state = "too-slow"


def first_line(exc: BaseException, limit: int = 300, default: str = "") -> str:
    """The first line of an exception's message, cut to ``limit`` (``default`` when it has none):
    what a stated reason quotes of a library's error."""
    return (str(exc).strip().splitlines() or [default])[0][:limit]


class HistoryUnavailable(QuantbenchError):
    """A history store that cannot be used right now (a database that cannot be reached, a refused
    login, a schema newer than this quantbench): the run's JSON is kept and stored later."""
