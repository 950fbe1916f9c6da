"""How far a benchmark run is: cases done of the run's total, the time so far, and what is left.

The cases of one run cost very different times (a kernel-suite case takes a fraction of a second on a CPU, a case on
vLLM's compiled engine half a minute with its start), so what is left is estimated per kind of case: the mean time
of the finished cases of the same kind (suite and runtime) for each case still to run, and the mean of all
finished cases for a kind not seen yet. Pure: the plugin feeds it each case's kind and seconds and prints the line.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


def duration_words(seconds: float) -> str:
    """12 s, 4m05s, 1h02m."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@dataclass
class Progress:
    """The run's cases by kind, in the order they run; ``finish`` each one as it ends."""

    kinds: list[str]                                    # one entry per case, in run order
    seconds: dict[str, list[float]] = field(default_factory=dict)   # the finished cases' times, by kind
    ended: Counter = field(default_factory=Counter)     # the cases that ended (timed or passed over), by kind

    @property
    def total(self) -> int:
        return len(self.kinds)

    @property
    def done(self) -> int:
        return sum(self.ended.values())

    def finish(self, kind: str, seconds: float | None) -> None:
        """A case ended after ``seconds``; None: passed over without running (its time tells nothing)."""
        if seconds is not None:
            self.seconds.setdefault(kind, []).append(seconds)
        self.ended[kind] += 1

    def left_seconds(self) -> float | None:
        """The estimate of what is left; None before any case finished (nothing to estimate from)."""
        finished = [s for times in self.seconds.values() for s in times]
        if not finished:
            return None
        overall = sum(finished) / len(finished)
        left = Counter(self.kinds)
        left.subtract(self.ended)
        return sum(count * (sum(self.seconds[kind]) / len(self.seconds[kind]) if kind in self.seconds else overall)
                   for kind, count in left.items() if count > 0)

    def line(self, elapsed: float) -> str:
        """'quantbench: 37/120 cases (31%), 4m12s so far, about 9m05s left'."""
        share = 100 * self.done / self.total if self.total else 100.0
        text = f"quantbench: {self.done}/{self.total} cases ({share:.0f}%), {duration_words(elapsed)} so far"
        left = self.left_seconds()
        if left is not None and self.done < self.total:
            text += f", about {duration_words(left)} left"
        return text
