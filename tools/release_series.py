"""A series of runs of one case across a library's releases, oldest release first, stored in a history: what
`quantbench changes` reads to place a step at the release that made it (docs/changes.md).

    python tools/release_series.py --package bitsandbytes --from 0.48.0 --to 0.50.2 \
        --case tiny-bnb-nf4-transformers-b1-p16-decode --runs 2 --history history-bnb-series

Each release is the same cached overlay `quantbench bisect` makes (the release alone, first on PYTHONPATH, the
rest of this interpreter's stack frozen); an unbuildable one is named and skipped."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from quantbench.bisect.probe import target_for
from quantbench.bisect.releases import available_versions, overlay, with_overlay
from quantbench.bisect.search import releases_between
from quantbench.paths import REPO_ROOT


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", required=True)
    parser.add_argument("--module", default=None)
    parser.add_argument("--from", dest="first", required=True)
    parser.add_argument("--to", dest="last", required=True)
    parser.add_argument("--case", required=True)
    parser.add_argument("--runs", type=int, default=2, help="runs a release")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--history", required=True)
    parser.add_argument("--cache", default=".cache/quantbench/bisect")
    args = parser.parse_args()
    module = args.module or args.package.replace("-", "_")
    target = target_for(args.case, args.rounds)
    for version in releases_between(available_versions(args.package, []), args.first, args.last):
        folder, why = overlay(args.package, version, module, Path(args.cache).resolve(), [])
        if folder is None:
            print(f"{version}: unbuildable: {why}", flush=True)
            continue
        for run in range(args.runs):
            proc = subprocess.run(target.command(f"--qb-history={args.history}"), check=False, cwd=REPO_ROOT,
                                  env={**with_overlay(os.environ, folder), "OMP_NUM_THREADS": "1"},
                                  capture_output=True, text=True)
            print(f"{version}: run {run + 1} exit {proc.returncode}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
