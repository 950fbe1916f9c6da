"""Run-to-run repeatability of the reference run's repeated decode cases.

usage: python tools/repeatability.py RUN.json [RUN.json ...]
Reads pytest-benchmark files of separate processes that measured the same decode cases and prints
per (model, format, batch, prompt): the run medians' mean, spread and coefficient of variation
across runs (the spread a nightly gate sees), beside the within-run spread (IQR / median).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from quantbench import history


def decode_frame(paths: list[Path]) -> pd.DataFrame:
    frames = []
    for index, path in enumerate(paths, 1):
        frame = history.run_frame(history.load_run(path), path)
        frames.append(frame[(frame["state"] == "ok") & (frame.get("phase") == "decode")].assign(run=index))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def cv_table(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.assign(within_run_iqr_pct=100 * frame["iqr_s"] / frame["median_s"])
    grouped = frame.groupby(["model", "format", "batch", "prompt_len"])
    table = grouped["decode_tokens_per_s"].agg(runs="count", mean="mean", std="std", min="min", max="max")
    table["cv_pct"] = 100 * table["std"] / table["mean"]
    table["within_run_iqr_pct"] = grouped["within_run_iqr_pct"].median()
    return table.reset_index()


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    frame = decode_frame([Path(a) for a in argv])
    if frame.empty:
        print("no measured decode cases in the files given", file=sys.stderr)
        return 1
    table = cv_table(frame)
    print(f"decode tok/s across {len(argv)} separate runs (CV = std/mean of the run medians)")
    print(table[table["runs"] > 1].to_markdown(index=False, floatfmt=".2f"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
