"""One resident thing at a time, by key: the generation suite's loaded model and the serving suite's server.

Loading a model or starting a server is expensive, so the cases of one key reuse it; it is stopped before the
next key's starts, so that memory figures see one at a time. A key that could not start, or whose thing
stopped a case for good (a crash), keeps its exception: every later case of that key is stated with it
without trying again.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from ..errors import CaseStopped

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class OneAtATime(Generic[K, V]):
    """``start(key)`` makes the value, ``stop(value)`` ends it. ``remember``: the exceptions of a failed start
    that are that key's answer from then on (a stated case, a bad checkpoint); any other error propagates
    and the next case of the key tries again."""

    def __init__(self, start: Callable[[K], V], stop: Callable[[V], None],
                 remember: tuple[type[BaseException], ...] = (CaseStopped,)):
        self._start, self._stop, self._remember = start, stop, remember
        self.key: K | None = None
        self.current: V | None = None
        self.failures: dict[K, BaseException] = {}

    def get(self, key: K) -> V:
        if key in self.failures:
            raise self.failures[key]
        if self.key == key and self.current is not None:
            return self.current
        self.release()
        try:
            self.current = self._start(key)
        except self._remember as exc:
            self.release()
            self.failures[key] = exc
            raise
        self.key = key
        return self.current

    def holds(self, key: K) -> bool:
        return self.current is not None and self.key == key

    def fail(self, key: K, exc: BaseException) -> None:
        """Every later ``get(key)`` raises ``exc``; key's value, if it is the one held, is stopped."""
        self.failures[key] = exc
        if self.holds(key):
            self.release()

    def release(self) -> None:
        current, self.key, self.current = self.current, None, None
        if current is not None:
            self._stop(current)
