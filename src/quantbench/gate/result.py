"""A gate over whole runs: stored runs in, decisions, a terminal table and a Markdown summary out."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pandas as pd

from .. import history
from . import decisions as rules
from .inputs import kernels_ran, merged_samples, samples
from .thresholds import Thresholds

# GitHub refuses a comment body over 65,536 characters ("Body is too long"): a global slowdown over the
# GPU matrix makes a thousand regressed rows, and the PR would get no comment at all.
MARKDOWN_MAX_CHARS = 60_000
_CUT = "\n... and {n} more rows, not listed here to fit a PR comment: the gate's table in the job log has them all."


def _could_show(fraction: float | None) -> str:
    if fraction is None:
        return ""
    return "none" if fraction == float("inf") else f">={fraction:.0%}"


@dataclass
class GateResult:
    decisions: list[rules.Decision]
    exit_code: int
    machine_note: str

    def frame(self) -> pd.DataFrame:
        rows = [{"state": d.state, "case": d.case, "metric": d.metric,
                 "ratio": round(d.ratio, 4) if d.ratio is not None else None,
                 "p_value": round(d.p_value, 4) if d.p_value is not None else None,
                 "baseline": d.baseline, "current": d.current, "note": d.note,
                 "could_show": _could_show(d.detectable)} for d in self.decisions]
        return pd.DataFrame(rows, columns=["state", "case", "metric", "ratio", "p_value", "baseline", "current",
                                           "note", "could_show"])

    def blind_spots(self) -> str | None:
        """One line on what the unchanged cases could not have seen: the smallest regression each could have
        been called at (its rounds and spread), as a median and the worst case; None where nothing is unchanged."""
        unchanged = [d for d in self.decisions if d.state == "unchanged" and d.detectable is not None]
        if not unchanged:
            return None
        finite = sorted((d.detectable, d.case, d.metric) for d in unchanged if d.detectable != float("inf"))
        blind = len(unchanged) - len(finite)
        parts = []
        if finite:
            worst = finite[-1]
            parts.append(f"the smallest regression each could have shown is {finite[len(finite) // 2][0]:.0%} "
                         f"(median), {worst[0]:.0%} at worst ({worst[1]} [{worst[2]}])")
        if blind:
            parts.append(f"{blind} could show none at their rounds and spread")
        return f"Blind spots of the {len(unchanged)} unchanged decisions: " + "; ".join(parts) + "."

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for d in self.decisions:
            counts[d.state] = counts.get(d.state, 0) + 1
        return counts

    def markdown(self, max_chars: int = MARKDOWN_MAX_CHARS) -> str:
        """The PR-comment summary, at most ``max_chars`` long: the rows that do not fit (worst come
        first) are counted, not listed; the terminal table in the job log has every decision."""
        verdict = "❌ performance regression" if self.exit_code else "✅ no performance regression"
        lines = [f"## quantbench gate: {verdict}", ""]
        lines.append(", ".join(f"**{n}** {s}" for s, n in sorted(self.counts().items())))
        if self.machine_note:
            lines += ["", f"> {self.machine_note}"]
        if blind := self.blind_spots():  # a pass never hides what it could not have seen
            lines += ["", blind]
        frame = self.frame()
        same_state = frame["note"].str.endswith(rules.STATED_IN_BOTH, na=False)
        notable = _one_row_per_kernel_change(frame[(frame["state"] != "unchanged") & ~same_state]
                                             .drop(columns=["could_show"]))  # said for unchanged rows only
        tail = []
        if same_state.any():
            counts = frame[same_state]["state"].value_counts()
            tail = ["", "Stated in both runs (not listed): " + ", ".join(f"{n} {s}" for s, n in counts.items())]
        if len(notable):
            table = notable.to_markdown(index=False, floatfmt=".4g").splitlines()
            room = max_chars - len("\n".join(lines + tail)) - len(_CUT.format(n=len(notable))) - 8
            fits = 0
            used = len(table[0]) + len(table[1]) + 2
            for line in table[2:]:
                used += len(line) + 1
                if used > room:
                    break
                fits += 1
            if fits == len(notable):
                lines += ["", "\n".join(table)]
            else:  # re-rendered: the shown rows' own column widths are no wider than the whole table's
                lines += ["", notable.head(fits).to_markdown(index=False, floatfmt=".4g") if fits else "",
                          _CUT.format(n=len(notable) - fits)]
        return "\n".join(lines + tail) + "\n"

    def table(self) -> str:
        """Every decision, one row each (the job log's copy; the PR comment groups kernel changes)."""
        return self.frame().to_string(index=False, max_colwidth=60)


def _one_row_per_kernel_change(notable: pd.DataFrame) -> pd.DataFrame:
    """kernel-changed rows with the same note (one format's cases, every batch and phase, moved to the
    same kernel) as one row naming the first case and how many more: the PR comment says what changed
    once, not once per case."""
    changed = notable["state"] == "kernel-changed"
    if changed.sum() < 2:
        return notable
    rows = []
    for _, group in notable[changed].groupby("note", sort=False):
        row = group.iloc[0].copy()
        if len(group) > 1:
            row["case"] = f"{row['case']} and {len(group) - 1} more"
        rows.append(row)
    grouped = pd.DataFrame(rows, columns=notable.columns)
    first = notable.index[changed][0]  # keep the worst-first order: the group sits where its first row was
    before, after = notable.loc[:first].iloc[:-1], notable[~changed].loc[first:]
    return pd.concat([before, grouped, after])


def run_gate(current: dict, baselines: list[dict], thresholds: Thresholds,
             fail_on: tuple[str, ...] = rules.DEFAULT_FAIL_ON, allow_incomparable: bool = False,
             paired: bool = False, upgrade: bool = False, blind_spots: bool = True) -> GateResult:
    """Compare a run with one or more baseline runs. A baseline from another machine/stack is never
    compared silently: it is incomparable, or compared and labelled with what differs
    (``allow_incomparable``, or ``upgrade``: the baseline is the stack this run's upgrade replaced, from
    ``resolve_baselines('previous')``). ``paired``: the current run is a merge whose i-th run was made
    together with the i-th baseline run. ``blind_spots``: unchanged decisions carry what they could have shown
    (the guide's History leaves it out for every pair but the newest)."""
    if isinstance(baselines, dict):
        baselines = [baselines]
    cur_env = history.environment_fields(current)
    diffs = []
    for baseline in baselines:
        for diff in rules.machine_differences(cur_env, history.environment_fields(baseline),
                                             history.COMPARABILITY_FIELDS):
            if diff not in diffs:
                diffs.append(diff)
    cur_samples, base_samples = samples(current), merged_samples(baselines)
    note = ""
    if diffs and not (allow_incomparable or upgrade):
        note = "incomparable machines: " + "; ".join(diffs)
        keys = sorted({k[0] for k in cur_samples} | {k[0] for k in base_samples})
        decisions = [rules.Decision(case, "*", "incomparable", note=note) for case in keys]
        return GateResult(decisions, rules.exit_code(decisions, fail_on), note)
    if diffs:
        note = ("upgraded since the baseline (--baseline previous): " if upgrade else
                "compared across different machines/stacks (--allow-incomparable): ") + "; ".join(diffs)
    cur_samples, base_samples = rules.fold_stated_cases(cur_samples, base_samples)
    decisions = rules.compare_runs(cur_samples, base_samples, thresholds, paired, history.device_kind(current),
                                   blind_spots)
    changes = rules.kernel_changes(kernels_ran(current), [kernels_ran(b) for b in baselines])
    decisions = rules.with_kernel_changes(decisions, changes)
    return GateResult(decisions, rules.exit_code(decisions, fail_on), note)


def confirm(result: GateResult, rerun: dict, baselines: list[dict], thresholds: Thresholds,
            fail_on: tuple[str, ...]) -> GateResult:
    """A regression stands only if the rerun of that case regresses too (run-level noise is independent)."""
    rerun_samples, base_samples = samples(rerun), merged_samples(baselines)
    device = history.device_kind(rerun)
    confirmed = []
    for d in result.decisions:
        if d.state != "regressed" or d.case == rules.SUITE:  # the suite decision is robust to one slow case
            confirmed.append(d)
            continue
        again = rules.decide(d.case, d.metric, rerun_samples.get((d.case, d.metric)),
                            base_samples.get((d.case, d.metric)), thresholds.for_case(d.case, d.metric, device))
        if again.state == "regressed":
            confirmed.append(replace(d, note=(d.note + "; " if d.note else "") +
                                          f"confirmed by rerun (ratio {again.ratio:.3f})"))
        else:
            confirmed.append(replace(d, state="unchanged", note=f"not reproduced on rerun "
                                          f"(first ratio {d.ratio:.3f}, rerun {again.state}"
                                          + (f" {again.ratio:.3f}" if again.ratio else "") + ")"))
    return GateResult(confirmed, rules.exit_code(confirmed, fail_on), result.machine_note)
