"""Change points across a whole history: where a series' level moved, by how much, and what changed there.

The gate asks "is tonight worse than its baseline"; this asks "since when, by how much, and with what".
A series is one case's metric on one kind of hardware and one named stack, across every machine signature
(so a library upgrade sits inside the series, the versions being the points' attributes). Its points are
per-run values (each run's median), oldest first: raw rounds are bursty and hide a step (Otava on raw bursty
points found 10-15 of 40 12% steps; ../shared/research/peers-changepoints-gguf-moe.md, 1.3).

The method is the split-and-merge of Fleming et al. (ICPE 2023, "Hunter"; Apache Otava implements it), written
here from the paper: Otava 0.8 pins scipy < 1.17 and numpy 2.2, which this stack does not hold. On the log of
the values (a step is a ratio):

- **split**: in a segment, the position where a two-sample t-test between its two sides is strongest, each
  side at least ``min_segment`` points; kept as a candidate when its p-value times the positions tried is below
  SPLIT_P (loose, as Otava's 10x its target), and both sides split again;
- **merge**: while any candidate's t-test against its neighbouring segments has p >= MERGE_P (Otava's default
  0.001), the weakest is dropped and its neighbours are retested;
- **confirm**: each survivor is tested again with the gate's own rank test (exact Mann-Whitney, one-sided in
  the direction it moved, alpha 0.05) between its neighbouring segments, and dropped where that test disagrees.

The t-test pools the two sides' variance (Student's): the noise is a share of the level (a CV), the same on
both sides of a step. Welch's test, which spends degrees of freedom on unequal variances, found 70-77% of
12% steps at 10+5 points where Student's finds 94% (simulated at the measured 3.8% CV; tests/test_changes.py
prints the power table and bounds it).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from ..errors import State
from .decisions import _mann_whitney, runs_can_decide

MIN_SEGMENT = 3
SPLIT_P = 0.2
MERGE_P = 0.001
CONFIRM_ALPHA = 0.05


@dataclass(frozen=True)
class Level:
    """One segment of a series: points ``start`` to ``end`` (exclusive), their mean and spread."""

    start: int
    end: int
    mean: float
    sd: float

    @property
    def n(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class ChangePoint:
    """The series moved from ``before``'s level to ``after``'s at point ``index`` (the first point of the new level)."""

    index: int
    before: Level
    after: Level
    p_value: float      # the t-test between the two neighbouring segments (on logs)
    confirm_p: float    # the gate's Mann-Whitney between them, one-sided in the direction it moved

    @property
    def change(self) -> float:
        """after / before - 1: +0.10 is 10% higher."""
        return self.after.mean / self.before.mean - 1 if self.before.mean else math.nan


def find_change_points(values: list[float], min_segment: int = MIN_SEGMENT, merge_p: float = MERGE_P,
                       confirm_alpha: float = CONFIRM_ALPHA) -> list[ChangePoint]:
    """The change points of a series of positive per-run values, oldest first. Pure."""
    if min_segment < 2:
        raise ValueError("min_segment must be at least 2: a t-test needs a spread on each side")
    logs = [math.log(v) for v in values]
    if len(logs) < 2 * min_segment:
        return []
    candidates: list[int] = []
    _split(logs, 0, len(logs), min_segment, candidates)
    kept = _merge(logs, sorted(candidates), merge_p)
    return _confirmed(values, logs, kept, confirm_alpha)


def _split(logs: list[float], start: int, end: int, min_segment: int, out: list[int]) -> None:
    positions = range(start + min_segment, end - min_segment + 1)
    if not positions:
        return
    p_value, where = min((_t_test(logs[start:k], logs[k:end]), k) for k in positions)
    if p_value * len(positions) < SPLIT_P:
        out.append(where)
        _split(logs, start, where, min_segment, out)
        _split(logs, where, end, min_segment, out)


def _merge(logs: list[float], points: list[int], merge_p: float) -> list[int]:
    points = list(points)
    while points:
        p_values = _neighbour_p_values(logs, points)
        weakest = max(range(len(points)), key=lambda i: p_values[i])
        if p_values[weakest] < merge_p:
            break
        points.pop(weakest)
    return points


def _neighbour_p_values(logs: list[float], points: list[int]) -> list[float]:
    edges = [0, *points, len(logs)]
    return [_t_test(logs[edges[i]:edges[i + 1]], logs[edges[i + 1]:edges[i + 2]]) for i in range(len(points))]


def _confirmed(values: list[float], logs: list[float], points: list[int], alpha: float) -> list[ChangePoint]:
    edges, found = [0, *points, len(values)], []
    p_values = _neighbour_p_values(logs, points)
    for i, index in enumerate(points):
        before, after = values[edges[i]:index], values[index:edges[i + 2]]
        if not runs_can_decide(len(after), len(before), alpha):
            continue
        moved = "greater" if statistics.median(after) > statistics.median(before) else "less"
        confirm_p = _mann_whitney(after, before, moved)
        if confirm_p < alpha:
            found.append(ChangePoint(index, _level(values, edges[i], index), _level(values, index, edges[i + 2]),
                                     p_values[i], confirm_p))
    return found


def _t_test(left: list[float], right: list[float]) -> float:
    from scipy.stats import ttest_ind  # here: see decisions._mann_whitney

    if _spread_free(left) and _spread_free(right):
        return 0.0 if left[0] != right[0] else 1.0  # two flat levels: a step with no noise, or none at all
    p_value = float(ttest_ind(left, right, equal_var=True).pvalue)
    return 1.0 if math.isnan(p_value) else p_value


def _spread_free(values: list[float]) -> bool:
    return max(values) == min(values)


def _level(values: list[float], start: int, end: int) -> Level:
    part = values[start:end]
    return Level(start, end, statistics.mean(part), statistics.stdev(part) if len(part) > 1 else 0.0)


# ----------------------------------------------------------------------------- series out of a history
@dataclass(frozen=True)
class Point:
    """One run's value of a series, with what identifies the run and what it ran on."""

    where: str
    when: str
    commit: str | None
    value: float
    versions: dict = field(default_factory=dict)
    kernel: str | None = None


@dataclass
class Series:
    hardware: tuple
    stack: str | None
    case: str
    metric: str
    points: list[Point] = field(default_factory=list)

    def label(self) -> str:
        return f"{self.case} [{self.metric}] on {self.hardware[1]} ({self.stack or 'unnamed stack'})"


@dataclass(frozen=True)
class Change:
    """A change point as the history names it: where it starts, what changed there, and whether it is worse."""

    series: Series
    point: ChangePoint
    direction: str  # the metric's: "higher" or "lower" is better

    @property
    def first(self) -> Point:
        return self.series.points[self.point.index]

    @property
    def last_before(self) -> Point:
        return self.series.points[self.point.index - 1]

    @property
    def regression(self) -> bool:
        return (self.point.change < 0) == (self.direction == "higher")

    def versions_changed(self) -> dict[str, tuple]:
        """Library and device fields that differ between the last run before and the first run after."""
        before, after = self.last_before.versions, self.first.versions
        return {k: (before.get(k), after.get(k)) for k in sorted(set(before) | set(after))
                if before.get(k) != after.get(k)}

    def versions_words(self, short: bool = False) -> str:
        """'versions.bitsandbytes 0.48.2 -> 0.49.0, ...' (``short``: without the 'versions.' / 'device.' prefix)."""
        return ", ".join(f"{k.split('.', 1)[-1] if short else k} {a} -> {b}"
                         for k, (a, b) in self.versions_changed().items())

    def kernel_changed(self) -> bool:
        return bool(self.last_before.kernel and self.first.kernel and self.last_before.kernel != self.first.kernel)

    def cause(self) -> str:
        """The likeliest cause, in words: a kernel that changed at the step, else the versions that did."""
        if self.kernel_changed():
            return f"the kernel changed: {self.last_before.kernel} -> {self.first.kernel} (the likeliest cause)"
        changed = self.versions_words()
        if changed:
            return f"versions changed: {changed}"
        return "nothing recorded changed between the two runs (the machine, or the suite's own code)"

    def row(self) -> dict:
        before, after = self.point.before, self.point.after
        return {"series": self.series.label(), "case": self.series.case, "metric": self.series.metric,
                "kind": "regression" if self.regression else "improvement",
                "change_pct": 100 * self.point.change, "starts_at": self.first.where, "date": self.first.when,
                "commit": self.first.commit, "p_value": self.point.p_value, "confirm_p": self.point.confirm_p,
                "mean_before": before.mean, "sd_before": before.sd, "n_before": before.n,
                "mean_after": after.mean, "sd_after": after.sd, "n_after": after.n,
                "kernel_before": self.last_before.kernel, "kernel_after": self.first.kernel,
                "versions_changed": self.versions_words(),
                "cause": self.cause()}


VERSION_PREFIX = "versions."


def series_of(runs: list[tuple[str, dict]], metrics: tuple[str, ...] | None = None,
              case_pattern: str = "*") -> list[Series]:
    """(where, payload) pairs, oldest first -> one Series per hardware x stack x case x metric with a measured
    value in at least one run. Stated cases (unsupported, crashed) are no points. Pure."""
    from ..history import frame, record
    from .inputs import kernels_ran, samples
    from .thresholds import wildcard_match

    found: dict[tuple, Series] = {}
    for where, payload in runs:
        env = frame.environment_fields(payload)
        versions = {k: v for k, v in env.items() if k.startswith((VERSION_PREFIX, "device."))}
        hardware, stack = frame.hardware(payload), frame.stack_name(payload)
        kernels = kernels_ran(payload)
        when, commit = payload.get("datetime") or "", record.commit(payload).get("id")
        for (case, metric), sample in samples(payload).items():
            if sample.state != State.OK or not sample.value or sample.value <= 0 or metric == "*":
                continue
            if (metrics and metric not in metrics) or not wildcard_match(case_pattern, case):
                continue
            series = found.setdefault((hardware, stack, case, metric), Series(hardware, stack, case, metric))
            series.points.append(Point(str(where), when, commit, sample.value, versions, kernels.get(case)))
    return list(found.values())


def changes_in(series_list: list[Series], thresholds, min_segment: int = MIN_SEGMENT) -> list[Change]:
    """Every confirmed change point of every series, the metric's direction from the gate's thresholds."""
    found = []
    for series in series_list:
        values = [p.value for p in series.points]
        direction = thresholds.for_case(series.case, series.metric).direction
        found += [Change(series, point, direction) for point in find_change_points(values, min_segment)]
    return found


def new_since(now: list[Change], series_list: list[Series], thresholds, previous: str,
              min_segment: int = MIN_SEGMENT) -> list[Change]:
    """Of the change points ``now`` (changes_in of ``series_list``), those the history up to run ``previous`` (a
    run's file name or where) did not hold: what tonight's runs brought (Otava's incremental view). Each series is
    analysed again without the points after ``previous``."""
    earlier_series = []
    for series in series_list:
        cut = next((i for i, p in enumerate(series.points) if previous in p.where), None)
        if cut is not None:
            earlier_series.append(Series(series.hardware, series.stack, series.case, series.metric,
                                         series.points[:cut + 1]))
    known = {(c.series.label(), c.first.where) for c in changes_in(earlier_series, thresholds, min_segment)}
    return [c for c in now if (c.series.label(), c.first.where) not in known]
