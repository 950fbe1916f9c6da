"""The regression gate's decision core: pure functions on plain numbers (no I/O, no torch).

A case regresses only if its median moved past the metric's threshold in the bad direction and
the samples differ beyond noise (one-sided Mann-Whitney on run medians when both sides hold
enough runs, else on rounds; Wilcoxon on paired A/B runs). docs/gate.md says why each choice.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from statistics import median
from typing import TYPE_CHECKING

from ..errors import QuantbenchError, State

if TYPE_CHECKING:
    from .thresholds import Thresholds

# A case the baseline measured that now crashed, passed its time budget, or lost requests under load fails the
# gate whatever --fail-on says: it is that case's failure, never 'missing'. Stated in both runs, it is the state,
# as unsupported is. The case states are errors.State's (one vocabulary); the others are the gate's own words.
BROKEN = tuple(state.value for state in State if state.broken)
_STATED = tuple(state.value for state in State if state not in (State.OK, State.INTERRUPTED) and not state.broken)
STATES = ("regressed", *BROKEN, "kernel-changed", "improved", "unchanged", "new", "missing", "not-reached", *_STATED,
          "no-baseline", "incomparable")
DEFAULT_FAIL_ON = ("regressed",)
STATED_IN_BOTH = "(the same in the baseline)"   # note suffix of a state both runs share: no news for a PR comment


def parse_fail_on(text: str, option: str = "--fail-on") -> tuple[str, ...]:
    """'regressed,missing' -> the states that fail the gate. A misspelt state would match no decision
    and the gate could never fail, so it is an error."""
    states = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in states if s not in STATES]
    if unknown or not states:
        raise QuantbenchError(None, f"{option} {text!r}: unknown gate state(s) {', '.join(map(repr, unknown))}"
                              if unknown else f"{option} {text!r} names no gate state",
                              f"use some of: {', '.join(STATES)}")
    return states


@dataclass(frozen=True)
class Threshold:
    direction: str = "higher"      # "higher" or "lower" is better
    max_regression: float = 0.05   # fraction past which a significant change counts
    alpha: float = 0.05            # significance level of the Mann-Whitney test
    min_rounds: int = 3

    def __post_init__(self):
        if self.direction not in ("higher", "lower"):
            raise ValueError(f"direction must be 'higher' or 'lower', got {self.direction!r}")
        for name in ("max_regression", "alpha"):
            value = getattr(self, name)
            # bool is an int to Python; "5%" or true in a TOML file is a typo, not a fraction
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ValueError(f"{name} must be a fraction in (0, 1), got {value!r}")
        if isinstance(self.min_rounds, bool) or not isinstance(self.min_rounds, int) or self.min_rounds < 1:
            raise ValueError(f"min_rounds must be a positive integer, got {self.min_rounds!r}")


@dataclass(frozen=True)
class Sample:
    """One case's value of one metric in one run: the median and the per-round values."""
    value: float
    rounds: tuple[float, ...] = ()
    state: str = State.OK          # errors.State: ok, unsupported, oom, ...
    reason: str = ""
    runs: tuple[float, ...] = ()   # the median of each run pooled into this sample, when several were


@dataclass(frozen=True)
class Decision:
    case: str
    metric: str
    state: str
    ratio: float | None = None
    p_value: float | None = None
    baseline: float | None = None
    current: float | None = None
    threshold: float | None = None
    note: str = ""
    detectable: float | None = None  # unchanged: the smallest change (fraction, bad direction) it could have shown

    def message(self) -> str:
        if self.ratio is None:
            return f"{self.case} [{self.metric}]: {self.state}" + (f" ({self.note})" if self.note else "")
        p = f", p={self.p_value:.3g}" if self.p_value is not None else ""
        blind = f"; could have shown {describe_detectable(self.detectable)}" if self.detectable is not None else ""
        return (f"{self.case} [{self.metric}]: {self.state}, ratio {self.ratio:.3f} "
                f"(current {self.current:.4g} vs baseline {self.baseline:.4g}, threshold "
                f"{self.threshold:.0%}{p})" + (f"; {self.note}" if self.note else "") + blind)


def describe_detectable(fraction: float | None) -> str:
    """'a 12% regression or more'; 'no regression at all (...)' where no shift could be told from noise."""
    if fraction is None:
        return "unknown"
    if math.isinf(fraction):
        return "no regression at all (its spread hides any change these rounds allow)"
    return f"a {fraction:.0%} regression or more"


def _change(current: float, baseline: float, direction: str) -> float:
    """Signed relative change where negative is worse, whatever the metric's direction."""
    ratio = current / baseline
    return ratio - 1.0 if direction == "higher" else 1.0 - ratio


def decide(case: str, metric: str, current: Sample | None, baseline: Sample | None,
           threshold: Threshold, paired: bool = False, blind_spots: bool = True) -> Decision:
    """Classify one (case, metric) pair. Pure: same inputs, same decision. ``blind_spots``: an unchanged decision
    carries the smallest regression it could have shown (a bisection on the test: 30x the cost of the decision)."""
    if baseline is None and current is None:
        return Decision(case, metric, "missing", note="in neither run")
    if current is not None and current.state in BROKEN and baseline is not None and baseline.state == State.OK:
        return Decision(case, metric, current.state, baseline=baseline.value,
                        note=f"measured in the baseline ({baseline.value:.4g}), {current.state} now: {current.reason}")
    if current is not None and current.state != State.OK:  # unsupported, oom, ...: that is the news, baseline or not
        note = (f"{current.reason}; not in the baseline" if baseline is None else
                f"{current.reason} {STATED_IN_BOTH}" if baseline.state == current.state else current.reason)
        return Decision(case, metric, current.state, note=note)
    if baseline is None:
        return Decision(case, metric, "new", current=current.value)
    if current is None:
        return Decision(case, metric, "missing", baseline=baseline.value, note="in the baseline, not in this run")
    if baseline.state != State.OK:
        return Decision(case, metric, "new", current=current.value,
                        note=f"baseline was {baseline.state}: {baseline.reason}")
    if not (baseline.value > 0 and math.isfinite(baseline.value) and math.isfinite(current.value)):
        return Decision(case, metric, "incomparable", note="baseline value is zero or not finite")
    ratio = current.value / baseline.value
    change = _change(current.value, baseline.value, threshold.direction)
    p_value, note, tested_on = None, "", None
    by_runs = run_level_test(current.runs, baseline.runs, threshold, paired)
    if by_runs is not None:
        enough, tested_on = True, "runs"
        ratio, p_value, units = by_runs
        change = _change(ratio, 1.0, threshold.direction)
        note = f"tested on {units}"
    else:
        n, m = len(current.rounds), len(baseline.rounds)
        # Enough rounds, and enough for the test to reach alpha at all: 3 vs 3 never goes below 1/C(6,3) = 0.05,
        # so at alpha 0.05 a 2x regression would read "within noise" (asv's is_different asks the same first).
        enough = min(n, m) >= threshold.min_rounds and runs_can_decide(n, m, threshold.alpha)
        if enough:
            tested_on = "rounds"
            p_value = _mann_whitney(current.rounds, baseline.rounds, _alternative(change, threshold.direction))
        elif min(n, m) >= threshold.min_rounds:
            note = (f"{n} vs {m} rounds cannot reach p < {threshold.alpha:g} (at best {1 / math.comb(n + m, n):.3g}):"
                    " decided on the ratio alone")
        else:
            note = f"fewer than {threshold.min_rounds} rounds: decided on the ratio alone"
    significant = p_value is not None and p_value < threshold.alpha
    if change <= -threshold.max_regression and (significant or not enough):
        state = "regressed"
    elif change >= threshold.max_regression and (significant or not enough):
        state = "improved"
    else:
        state = "unchanged"
        if abs(change) >= threshold.max_regression:
            note = "; ".join(filter(None, [note, "past the threshold but within noise (not significant)"]))
    detectable = (detectable_change(current, baseline, threshold, tested_on, paired)
                  if state == "unchanged" and blind_spots else None)
    return Decision(case, metric, state, ratio, p_value, baseline.value, current.value,
                    threshold.max_regression, note, detectable)


def detectable_change(current: Sample, baseline: Sample, threshold: Threshold, tested_on: str | None,
                      paired: bool = False) -> float:
    """The smallest regression (a fraction, in the metric's bad direction) this case would have been called
    regressed at, by the test its decision used (``tested_on``: "runs", "rounds", or None for the ratio alone),
    at the same counts and spreads: the current values are moved as they are, spread included, until their median
    sits that far past the baseline's. The threshold where the decision rests on the ratio alone, infinity where
    no move separates them (a baseline spread no shift of these few values can clear). Pure: bisection on the
    test's own p-value."""
    if tested_on is None:
        return threshold.max_regression
    units = tested_on
    mine, theirs = (current.runs, baseline.runs) if units == "runs" else (current.rounds, baseline.rounds)
    worse = _alternative(-1.0, threshold.direction)
    centre, target = median(mine), median(theirs)

    def p_at(change: float) -> float:
        factor = 1 - change if threshold.direction == "higher" else 1 + change
        moved = [target * factor * v / centre for v in mine]
        if units == "runs":
            return run_level_test(moved, theirs, threshold, paired)[1]
        return _mann_whitney(moved, theirs, worse)

    low, high = threshold.max_regression, (0.999 if threshold.direction == "higher" else 99.0)
    if not (centre > 0 and target > 0):
        return math.inf
    if p_at(low) < threshold.alpha:
        return low
    if p_at(high) >= threshold.alpha:
        return math.inf
    for _ in range(20):  # to 1e-6 of the range: far finer than any spread
        middle = (low + high) / 2
        low, high = (low, middle) if p_at(middle) < threshold.alpha else (middle, high)
    return high


def run_level_test(current_runs, baseline_runs, threshold: Threshold,
                   paired: bool) -> tuple[float, float, str] | None:
    """(ratio, p-value, what was tested) on per-run values, or None where they cannot decide.
    Paired (run i of each side made at the same time or back to back, so the machine's drift is
    shared within a pair): the per-pair ratios, Wilcoxon signed-rank. Otherwise the two sides'
    run values, Mann-Whitney, ratio of their medians."""
    if paired and len(current_runs) == len(baseline_runs) and pairs_can_decide(len(current_runs), threshold.alpha):
        logs = [math.log(c / b) for c, b in zip(current_runs, baseline_runs)]
        ratio = math.exp(median(logs))
        p_value = _signed_rank(logs, _alternative(_change(ratio, 1.0, threshold.direction), threshold.direction))
        return ratio, p_value, f"paired runs ({len(logs)} pairs)"
    if runs_can_decide(len(current_runs), len(baseline_runs), threshold.alpha):
        ratio = median(current_runs) / median(baseline_runs)
        p_value = _mann_whitney(current_runs, baseline_runs,
                                _alternative(_change(ratio, 1.0, threshold.direction), threshold.direction))
        return ratio, p_value, f"run medians ({len(current_runs)} vs {len(baseline_runs)} runs)"
    return None


def runs_can_decide(current_runs: int, baseline_runs: int, alpha: float) -> bool:
    """Whether a test on run medians can be significant at all: the smallest one-sided p-value of
    the exact Mann-Whitney test is 1 / C(n + m, n) (every run of one side beyond every run of the
    other). 4 vs 4 runs reach 0.014; 3 vs 3 only 0.05; 1 vs anything never."""
    if min(current_runs, baseline_runs) < 2:
        return False
    return 1 / math.comb(current_runs + baseline_runs, current_runs) < alpha


def pairs_can_decide(pairs: int, alpha: float) -> bool:
    """Whether the exact one-sided Wilcoxon signed-rank test on ``pairs`` pairs can reach alpha:
    its smallest p-value is 1 / 2**pairs (every pair moved the same way); 5 pairs reach 0.031."""
    return pairs >= 1 and 0.5 ** pairs < alpha


def _signed_rank(logs, alternative: str) -> float:
    if all(v == 0 for v in logs):
        return 1.0
    from scipy.stats import wilcoxon  # here, not at the top: see _mann_whitney

    p_value = float(wilcoxon(logs, alternative=alternative).pvalue)
    return 1.0 if math.isnan(p_value) else p_value


def _alternative(change: float, direction: str) -> str:
    """The one-sided alternative in the direction the values moved (current vs baseline)."""
    worse = "less" if direction == "higher" else "greater"
    better = "greater" if direction == "higher" else "less"
    return worse if change < 0 else better


def _mann_whitney(current, baseline, alternative: str) -> float:
    # scipy.stats takes ~0.75 s to import, and every pytest start imports this module (the plugin
    # checks --qb-gate-fail-on against STATES): it is imported when a gate first tests a change.
    from scipy.stats import mannwhitneyu

    p_value = float(mannwhitneyu(current, baseline, alternative=alternative).pvalue)
    return 1.0 if math.isnan(p_value) else p_value  # all values tied: no evidence of a change


# ----------------------------------------------------------------------------- whole runs
SUITE = "suite (median of case ratios)"
MIN_CASES_FOR_SUITE = 4


def decide_suite(metric: str, decisions: list[Decision], threshold: Threshold,
                 current: dict | None = None, baseline: dict | None = None, paired: bool = False) -> Decision | None:
    """One decision over all cases of a metric, catching a slowdown that hits every case a little
    even where each case alone is within its noise; a burst that slows a few cases moves neither
    the median nor the test much (means and rank tests on values are pulled by such outliers).

    The cases of one run share that run's machine state, so they are not independent either:
    where both sides hold enough aligned runs, each run gets one score, the median over cases of
    its value relative to the baseline's, and ``run_level_test`` compares the two sides' scores
    (on CPU, eight A/A pairs where two runs of one side were slow read p=0.038 on the case-sign
    test, p=0.22 on run scores). Otherwise the ratio is the median of the case ratios and an exact
    sign test counts how many cases got worse."""
    ratios = sorted(d.ratio for d in decisions if d.metric == metric and d.ratio and d.ratio > 0)
    if len(ratios) < MIN_CASES_FOR_SUITE:
        return None
    worse = sum(_change(r, 1.0, threshold.direction) < 0 for r in ratios)
    better = sum(_change(r, 1.0, threshold.direction) > 0 for r in ratios)
    counted = f"{worse} of {len(ratios)} cases worse"
    scores = run_scores(metric, current or {}, baseline or {})
    by_runs = run_level_test(scores[0], scores[1], threshold, paired) if scores is not None else None
    if by_runs is not None:
        ratio, p_value, units = by_runs
        change = _change(ratio, 1.0, threshold.direction)
        note = (f"tested on run scores, {units}: each run's score is the median over {scores[2]} cases of its "
                f"value / the baseline's; {counted}")
    else:
        mid = len(ratios) // 2
        ratio = ratios[mid] if len(ratios) % 2 else math.sqrt(ratios[mid - 1] * ratios[mid])
        change = _change(ratio, 1.0, threshold.direction)
        moved = worse if change < 0 else better
        from scipy.stats import binomtest  # see _mann_whitney

        p_value = float(binomtest(moved, worse + better, 0.5, alternative="greater").pvalue) if worse + better else 1.0
        note = counted
    significant = p_value < threshold.alpha
    state = ("regressed" if change <= -threshold.max_regression and significant else
             "improved" if change >= threshold.max_regression and significant else "unchanged")
    return Decision(SUITE, metric, state, ratio, p_value, 1.0, ratio, threshold.max_regression, note)


def run_scores(metric: str, current: dict, baseline: dict) -> tuple[list[float], list[float], int] | None:
    """Per-run suite scores, or None without enough aligned runs. A run's score is the median over
    cases of (the run's value / the baseline's value for that case), taken on logs so an even count
    gives the geometric midpoint. Only cases present in every run of both sides count, so run j
    means the same process for each case."""
    both = [(current[k], baseline[k]) for k in current
            if k[1] == metric and k in baseline and current[k].runs and baseline[k].runs and baseline[k].value > 0]
    if not both:
        return None
    n_cur, n_base = max(len(c.runs) for c, _ in both), max(len(b.runs) for _, b in both)
    aligned = [(c, b) for c, b in both if len(c.runs) == n_cur and len(b.runs) == n_base]
    if len(aligned) < MIN_CASES_FOR_SUITE:
        return None

    def score(side: int, j: int) -> float:
        return math.exp(median(math.log(pair[side].runs[j] / pair[1].value) for pair in aligned))
    return [score(0, j) for j in range(n_cur)], [score(1, i) for i in range(n_base)], len(aligned)


def fold_stated_cases(current: dict[tuple[str, str], Sample], baseline: dict[tuple[str, str], Sample]):
    """A stated case (unsupported, oom, ...) is one ``(case, "*")`` sample. Where the other run
    measured that case, the state takes each of its metrics instead (so "bf16 b64 went oom" is a
    row per metric); where neither run measured it, the ``*`` row stays (so a case unsupported in
    both still shows, with its reason). Pure; returns new (current, baseline) dicts."""
    def fold(side, other):
        measured_other = {case for case, metric in other if metric != "*"}
        stated = {case: s for (case, metric), s in side.items() if metric == "*"}
        out = {k: v for k, v in side.items() if not (k[1] == "*" and k[0] in measured_other)}
        for case, metric in other:
            if metric != "*" and case in stated:
                out[(case, metric)] = stated[case]
        return out
    return fold(current, baseline), fold(baseline, current)


def compare_runs(current: dict[tuple[str, str], Sample], baseline: dict[tuple[str, str], Sample],
                 thresholds: Thresholds, paired: bool = False, device: str | None = None,
                 blind_spots: bool = True) -> list[Decision]:
    """Decide every (case, metric) in either run, plus one suite-level decision per metric,
    sorted worst-first by state. ``device``: the current run's device kind, for device overrides;
    the suite-level decisions keep the metric's own threshold (a global slowdown is what they catch)."""
    keys = sorted(set(current) | set(baseline))
    decisions = [decide(case, metric, current.get((case, metric)), baseline.get((case, metric)),
                        thresholds.for_case(case, metric, device), paired, blind_spots) for case, metric in keys]
    for metric in sorted({d.metric for d in decisions}):
        suite = decide_suite(metric, decisions, thresholds.metrics.get(metric, thresholds.fallback), current, baseline,
                             paired)
        if suite is not None:
            decisions.append(suite)
    return worst_first(decisions)


def worst_first(decisions: list[Decision]) -> list[Decision]:
    order = {s: i for i, s in enumerate(STATES)}
    return sorted(decisions, key=lambda d: (order.get(d.state, 99), d.case, d.metric))


# ----------------------------------------------------------------------------- kernels that ran
KERNEL_METRIC = "kernel"   # the metric column of a kernel-changed decision: it concerns the case, not a number
KERNEL_CHANGED_NOTE = "the kernel changed (see its kernel row)"   # on that case's regressed/improved rows
# A library's version inside a kernel description (gptqmodel's "gptqmodel 7.5.0 backend=auto -> ...") is
# the upgrade, which the signature already records, not a change of kernel.
_VERSION = re.compile(r"\d+(?:\.\d+)+[\w.+-]*")


# inputs.kernels_ran appends the kernel fields observed at a case's shape after this; same_kernel compares them
OBSERVED = " || observed at the case's shape: "


def same_kernel(a: str, b: str) -> bool:
    """Same code path, versions aside; the fields observed at the case's shape compared where both runs have them
    (a baseline recorded before they existed is not a kernel change)."""
    (prose_a, _, seen_a), (prose_b, _, seen_b) = a.partition(OBSERVED), b.partition(OBSERVED)
    if _VERSION.sub("<version>", prose_a) != _VERSION.sub("<version>", prose_b):
        return False
    return not (seen_a and seen_b) or seen_a == seen_b


def kernel_changes(current: dict[str, str], baselines: list[dict[str, str]]) -> list[Decision]:
    """A ``kernel-changed`` decision for each case whose recorded code path (what actually ran) is
    none of those its baseline runs recorded: the upgrade that swaps Marlin for a dequantize fallback,
    or a Triton path for the naive one, is named even where the throughput moved within noise, and
    explains a regression where it did not. A case that is measured on one side only is left to the
    metric decisions (new, missing, unsupported). Pure."""
    changes = []
    for case in sorted(current):
        before = [kernels[case] for kernels in baselines if case in kernels]
        if before and not any(same_kernel(current[case], kernel) for kernel in before):
            was = " | ".join(dict.fromkeys(before))
            changes.append(Decision(case, KERNEL_METRIC, "kernel-changed",
                                    note=f"baseline ran {was}; this run ran {current[case]}"))
    return changes


def with_kernel_changes(decisions: list[Decision], changes: list[Decision]) -> list[Decision]:
    """``decisions`` plus ``changes``, where a case's regressed or improved metric rows point at its
    kernel change: the reader of a regression sees its cause in the same row."""
    changed = {c.case for c in changes}
    marked = [replace(d, note="; ".join(filter(None, [d.note, KERNEL_CHANGED_NOTE])))
              if d.case in changed and d.state in ("regressed", "improved") else d for d in decisions]
    return worst_first(marked + changes)


def machine_differences(current: dict, baseline: dict, fields: tuple[str, ...]) -> list[str]:
    """Fields that differ between two environment dicts (flattened keys)."""
    return [f"{key}: {baseline.get(key)} -> {current.get(key)}" for key in fields
            if current.get(key) != baseline.get(key)]


def exit_code(decisions: list[Decision], fail_on: tuple[str, ...] = DEFAULT_FAIL_ON) -> int:
    return 1 if any(d.state in fail_on or (d.state in BROKEN and d.baseline is not None) for d in decisions) else 0

