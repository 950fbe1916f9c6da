"""Which stored runs a gate compares with: paths as given, or 'latest' / 'previous' in a history
folder; and the pytest arguments that rerun regressed cases."""

from __future__ import annotations

import sys
from pathlib import Path

from .. import history
from ..errors import BadHistory, NoBaseline
from ..history import record


def resolve_baselines(baseline: str, store, current: dict, current_ref=None, runs: int = 3) -> list:
    """Baseline runs for ``--baseline`` (paths, or runs in ``store``: a history folder, a database or a
    path to one), oldest first:

    - paths or stored run names as given (comma-separated);
    - 'latest': the newest ``runs`` runs of the current run's signature that hold none of the
      current run's runs. Excluded by identity, not only by path: `nox -s nightly` gates its
      --benchmark-json while the same run already sits in the history, and comparing a run with itself
      would dilute the regression it is there to catch (with one earlier night, by half). The shards of
      one sharded nightly count as one run (all of them are returned: ``history.collapse`` joins them).
    - 'previous': as 'latest' while this signature has earlier runs; on the first run after an
      upgrade (a new driver, CUDA or library version makes a new signature) the newest runs of the
      signature it replaced: same hardware, same stack. That is the comparison a nightly exists for;
      the gate labels it with what changed (``crosses_upgrade``)."""
    store = store if hasattr(store, "runs") else history.open_store(store)
    if baseline not in ("latest", "previous"):
        return [store.find(p) or Path(p) for p in baseline.split(",")]
    sig = history.signature(current)
    own = history.run_ids(current)
    own_group = _group_id(current)

    def is_current(ref) -> bool:
        if current_ref is None:
            return False
        if isinstance(ref, Path) and isinstance(current_ref, Path):
            return ref.resolve() == current_ref.resolve()
        return ref == current_ref

    def newest(signature_name: str) -> list:
        chosen: list = []
        for unit in reversed(history.units(store.runs(signature_name), store.name_of)):
            if len(chosen) == runs:
                break
            group = history.group_of(store.name_of(unit[-1]))
            if own_group and group and group[0] == history.shard_group_name(own_group):
                continue  # another shard of this very nightly
            members = [ref for ref in unit if not is_current(ref)]
            try:
                payloads = [store.load(ref) for ref in members]
            except BadHistory as exc:  # say so and take the next newest: the nightly still gets a verdict
                print(f"quantbench gate: skipped a damaged baseline candidate: {exc.line()}", file=sys.stderr)
                continue
            if payloads and not any(history.run_ids(p) & own for p in payloads):
                chosen.append(members)
        return [ref for unit in chosen[::-1] for ref in unit]

    chosen = newest(sig)
    if not chosen and baseline == "previous":
        replaced = _replaced_signature(store, current, sig, own)
        chosen = newest(replaced) if replaced else []
    if not chosen:
        where = "for this machine signature" + (" or the stack it replaced on this hardware"
                                                 if baseline == "previous" else "")
        raise NoBaseline(f"{store.label}/{sig}", f"no earlier run {where} (empty baseline folder, "
                         "or it holds only this run)",
                         "run the benchmark with --qb-history on the baseline first, or pass --baseline PATH")
    return chosen


def _group_id(payload: dict) -> str | None:
    """The group of a shard, or of shards combined into one run; None for a whole run."""
    section = record.section(payload)
    return (section.get("shard") or {}).get("group") or (section.get("group") or {}).get("id")


def _replaced_signature(store, current: dict, sig: str, own: set[str]) -> str | None:
    """The signature of the newest earlier run on the same hardware and stack under another signature."""
    want = (history.hardware(current), history.stack_name(current))
    for ref in reversed(store.runs()):  # newest first, across signatures
        if store.signature_of(ref) == sig:
            continue
        try:
            payload = store.load(ref)
        except BadHistory as exc:  # another signature's bad file must not stop this machine's gate
            print(f"quantbench gate: skipped while looking for the replaced stack: {exc.line()}", file=sys.stderr)
            continue
        if (history.hardware(payload), history.stack_name(payload)) == want and not history.run_ids(payload) & own:
            return store.signature_of(ref)
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
