"""The guide's Changes page: each change point the history holds (gate.changes), as a table and a step chart
per series that moved (the points, each level's mean, the change point marked with what changed there)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pandas as pd
from matplotlib.ticker import MaxNLocator

from .. import history
from ..gate import changes as cp
from .guide import _md, _save, plt

CHANGES_PAGE = "CHANGES.md"


def all_runs(store, warn=None) -> list[tuple[str, dict]]:
    """Every run of every signature in ``store`` (sharded runs as one), oldest first by their date: a series
    crosses signatures where a library upgrade made a new one."""
    runs = []
    for name in store.signatures():
        runs += history.collapse(history.read_all(store, store.runs(name), warn))
    return sorted(runs, key=lambda run: run[1].get("datetime") or "")  # stable: a signature's own order kept


def line(change: cp.Change) -> str:
    """One change point in one line, for the terminal and the nightly's log."""
    point = change.point
    kind = "REGRESSION " if change.regression else "improvement"
    return (f"{kind} {change.series.label()}: {100 * point.change:+.1f}% from {Path(change.first.where).name} "
            f"({change.first.when[:19]}, commit {(change.first.commit or '?')[:8]}); mean {point.before.mean:.4g} "
            f"(sd {point.before.sd:.2g}, {point.before.n} runs) -> {point.after.mean:.4g} (sd {point.after.sd:.2g}, "
            f"{point.after.n} runs), p={point.p_value:.2g} (t-test), {point.confirm_p:.2g} (gate's rank test); "
            f"{change.cause()}")


def table(found: list[cp.Change]) -> pd.DataFrame:
    rows = [change.row() for change in found]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["starts_at"] = [Path(w).name for w in frame["starts_at"]]
    return frame


def write_json(found: list[cp.Change], path: Path) -> None:
    history.write_atomic(path, {"change_points": table(found).to_dict(orient="records")})


def render(found: list[cp.Change], series: list[cp.Series], out_dir: Path) -> Path:
    """CHANGES.md in ``out_dir``: a table of the change points and a step chart per series that moved."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# Changes", "",
             (f"Change points over {len(series)} series (a case's metric on one hardware and named stack, across "
              "library versions): split-and-merge on per-run values, each confirmed by the gate's rank test "
              "(src/quantbench/gate/changes.py)."), ""]
    short = sum(len(s.points) < 2 * cp.MIN_SEGMENT for s in series)
    if short:
        longest = max(len(s.points) for s in series)
        lines += [(f"{short} of {len(series)} series have fewer than {2 * cp.MIN_SEGMENT} runs (two levels of "
                   f"{cp.MIN_SEGMENT}; the longest has {longest}): no change point can be found in them yet."), ""]
    if not found:
        lines += ["No change point in any series long enough to hold one." if short < len(series) else
                  "No change point found.", ""]
    else:
        columns = ["kind", "series", "change_pct", "starts_at", "date", "commit", "p_value", "confirm_p",
                   "mean_before", "sd_before", "n_before", "mean_after", "sd_after", "n_after", "cause"]
        lines += [_md(table(found)[columns]), ""]
        by_series: dict[str, list[cp.Change]] = {}
        for change in found:
            by_series.setdefault(change.series.label(), []).append(change)
        for index, moved in enumerate(by_series.values()):
            lines += [f"## {moved[0].series.label()}", "", f"![steps]({chart(moved, out_dir, f'changes-{index}')})", ""]
    page = out_dir / CHANGES_PAGE
    page.write_text("\n".join(lines))
    return page


def chart(moved: list[cp.Change], out_dir: Path, stem: str) -> str:
    """The series' points in run order, each level's mean as a step, each change point marked and labelled
    with what changed between the runs around it."""
    series = moved[0].series
    values = [p.value for p in series.points]
    fig, ax = plt.subplots(figsize=(10, 4), layout="constrained")
    ax.plot(range(len(values)), values, "o", color="0.35", label="one run's value")
    edges = [0, *(c.point.index for c in moved), len(values)]
    for start, end in itertools.pairwise(edges):
        mean = sum(values[start:end]) / (end - start)
        ax.hlines(mean, start - 0.4, end - 0.6, colors="tab:blue", linewidth=2.5,
                  label="level (mean)" if start == 0 else None)
    for change in moved:
        color = "tab:red" if change.regression else "tab:green"
        ax.axvline(change.point.index - 0.5, color=color, linestyle="--")
        kernel = change.cause() if change.kernel_changed() else ""
        words = "\n".join(_short(w) for w in (kernel, change.versions_words(short=True)) if w)
        ax.annotate(f"{100 * change.point.change:+.1f}%\n{words or 'nothing recorded changed'}",
                    (change.point.index - 0.5, 1),
                    xycoords=("data", "axes fraction"), va="top", ha="left", fontsize=7, color=color)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("run (oldest first)")
    ax.set_ylabel(series.metric)
    ax.set_title(series.label(), fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    return _save(fig, out_dir, stem)


def _short(cause: str, width: int = 60) -> str:
    words = re.sub(r"^versions changed: ", "", cause)
    return words if len(words) <= width else words[:width - 3] + "..."
