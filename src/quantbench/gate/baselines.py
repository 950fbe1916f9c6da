"""Which stored runs a gate compares with: paths as given, or 'latest' / 'previous' in a history
folder; and the pytest arguments that rerun regressed cases."""

from __future__ import annotations

import sys
from pathlib import Path

from .. import history
from ..errors import BadHistory, NoBaseline
from ..history import record


def resolve_baselines(baseline: str, history_root: Path, current: dict, current_path: Path | None,
                      runs: int = 3) -> list[Path]:
    """Baseline files for ``--baseline``: paths as given, or

    - 'latest': the newest ``runs`` files in the current run's signature folder that hold none of the
      current run's runs. Excluded by identity, not only by path: `nox -s nightly` gates its
      --benchmark-json while the same run already sits in the history, and comparing a run with itself
      would dilute the regression it is there to catch (with one earlier night, by half).
    - 'previous': as 'latest' while this signature has earlier runs; on the first run after an
      upgrade (a new driver, CUDA or library version makes a new signature) the newest runs of the
      signature it replaced: same hardware, same stack. That is the comparison a nightly exists for;
      the gate labels it with what changed (``crosses_upgrade``)."""
    if baseline not in ("latest", "previous"):
        return [Path(p) for p in baseline.split(",")]
    sig = history.signature(current)
    own = history.run_ids(current)
    skip = Path(current_path).resolve() if current_path is not None else None

    def newest(signature_name: str) -> list[Path]:
        chosen: list[Path] = []
        for path in reversed(history.run_files(history_root, signature_name)):
            if len(chosen) == runs:
                break
            if path.resolve() == skip:
                continue
            try:
                payload = history.load_run(path)
            except BadHistory as exc:  # say so and take the next newest: the nightly still gets a verdict
                print(f"quantbench gate: skipped a damaged baseline candidate: {exc.line()}", file=sys.stderr)
                continue
            if not history.run_ids(payload) & own:
                chosen.append(path)
        return chosen[::-1]

    chosen = newest(sig)
    if not chosen and baseline == "previous":
        replaced = _replaced_signature(Path(history_root), current, sig, own)
        chosen = newest(replaced) if replaced else []
    if not chosen:
        where = "for this machine signature" + (" or the stack it replaced on this hardware"
                                                 if baseline == "previous" else "")
        raise NoBaseline(Path(history_root) / sig, f"no earlier run {where} (empty baseline folder, "
                         "or it holds only this run)",
                         "run the benchmark with --qb-history on the baseline first, or pass --baseline PATH")
    return chosen


def _replaced_signature(root: Path, current: dict, sig: str, own: set[str]) -> str | None:
    """The signature of the newest earlier run on the same hardware and stack under another signature."""
    want = (history.hardware(current), history.stack_name(current))
    for path in reversed(history.run_files(root)):  # newest first, across signature folders
        if path.parent.name == sig:
            continue
        try:
            payload = history.load_run(path)
        except BadHistory as exc:  # another signature's bad file must not stop this machine's gate
            print(f"quantbench gate: skipped while looking for the replaced stack: {exc.line()}", file=sys.stderr)
            continue
        if (history.hardware(payload), history.stack_name(payload)) == want and not history.run_ids(payload) & own:
            return path.parent.name
    return None


def crosses_upgrade(baseline: str, current: dict, baselines: list[dict]) -> bool:
    """Did ``--baseline previous`` resolve to the stack this run's upgrade replaced?"""
    return baseline == "previous" and any(history.signature(b) != history.signature(current) for b in baselines)


def rerun_args(current: dict, nodeids: list[str], out_json: Path) -> list[str]:
    """pytest arguments that repeat only ``nodeids`` with the original run's options."""
    original = list(record.section(current).get("args") or [])
    dropped_with_value = {"-k", "-m", "--benchmark-json", "--qb-history", "--qb-gate", "--qb-gate-summary"}
    kept, skip_next = [], False
    for arg in original:
        if skip_next:
            skip_next = False
            continue
        if arg in dropped_with_value:
            skip_next = True
            continue
        if arg.split("=", 1)[0] in dropped_with_value:
            continue
        if not arg.startswith("-") and ("::" in arg or Path(arg.split("::")[0]).exists()):
            continue  # a test path or node id: replaced by the regressed node ids
        kept.append(arg)
    return [*nodeids, *kept, f"--benchmark-json={out_json}"]
