"""Runs made into one: a merge pools the rounds of repeats, a combination takes each case from the
newest run that measured it (a reference run split over several slots)."""

from __future__ import annotations

from ..errors import State
from . import record
from .frame import case_state, stated_case_name
from .store import RUN_ROUNDS_KEY, signature


def merge_runs(payloads: list[dict]) -> dict:
    """Several runs of the same cases (e.g. interleaved A/B repeats) -> one pytest-benchmark payload
    whose round data are pooled, whose stats are recomputed from them, and whose extra_info keeps
    each run's round times (the gate's independent units). Cut-off cases' partial times stay out."""
    import copy
    import statistics

    if not payloads:
        raise ValueError("merge_runs needs at least one run")
    # Pooled rounds are one population only on one machine and library stack: rounds of transformers
    # 4.51 and 5.17 pooled would read as one noisy run of neither.
    _one_signature(payloads, "merged")
    merged = copy.deepcopy(payloads[-1])
    per_run: dict[str, list[list[float]]] = {}
    per_values: dict[str, dict[str, list[float]]] = {}  # a client's per-round values, pooled like the rounds
    for payload in payloads:
        for bench in payload.get("benchmarks", []):
            if case_state(bench) == State.INTERRUPTED:
                continue
            info = record.case_info(bench)
            # a run that is itself a merge contributes its runs, not one pooled pseudo-run
            runs = info.get(RUN_ROUNDS_KEY) or [(bench.get("stats") or {}).get("data") or []]
            per_run.setdefault(bench["name"], []).extend(list(r) for r in runs if r)
            for metric, values in (info.get("round_values") or {}).items():  # in the same run order
                per_values.setdefault(bench["name"], {}).setdefault(metric, []).extend(values)
    for bench in merged.get("benchmarks", []):
        runs = per_run.get(bench["name"], [])
        data = sorted(v for run in runs for v in run)
        if not data:
            continue
        if case_state(bench) != State.INTERRUPTED:  # the gate tests run medians when there are enough runs
            bench["extra_info"][RUN_ROUNDS_KEY] = runs
            if bench["name"] in per_values:
                bench["extra_info"]["round_values"] = per_values[bench["name"]]
        q1, _, q3 = statistics.quantiles(data, n=4) if len(data) > 1 else (data[0], data[0], data[0])
        bench["stats"].update(data=data, rounds=len(data), median=statistics.median(data), min=data[0],
                              max=data[-1], mean=statistics.fmean(data), iqr=q3 - q1,
                              stddev=statistics.stdev(data) if len(data) > 1 else 0.0)
    merged.setdefault("quantbench", {})["merged_from"] = sum(runs_in(p) for p in payloads)
    merged["quantbench"]["run_ids"] = _sources(payloads)
    return merged


def _one_signature(payloads: list[dict], verb: str) -> None:
    signatures = sorted({signature(p) for p in payloads})
    if len(signatures) > 1:
        raise ValueError(f"runs from different machine signatures cannot be {verb}: {signatures}")


def run_ids(payload: dict) -> set[str]:
    """The runs a payload holds, each named by pytest-benchmark's start time and the commit: one for a
    plain run, its sources' for a merge or a combination. The benchmark JSON and the history file of
    one run carry the same ids, so a gate can tell that a history file *is* the run it gates."""
    stored = record.section(payload).get("run_ids")
    if stored:
        return set(stored)
    return {f"{payload.get('datetime')}@{record.commit(payload).get('id')}"}


def _sources(payloads: list[dict]) -> list[str]:
    return sorted(set().union(*(run_ids(p) for p in payloads)))


def runs_in(payload: dict) -> int:
    """How many runs a history file holds: 1, or as many as a merge pooled."""
    return int(record.section(payload).get("merged_from") or 1)


def combine_runs(payloads: list[dict]) -> dict:
    """Complementary runs of one machine signature (a reference run split over several slots, each
    a separate process) -> one payload: each case from the newest run that measured it; a stated
    case (unsupported, guard-failed, ...) only where no run measured it. ``combined_from`` keeps
    which runs went in, so the reader knows the cases were not timed in one process."""
    import copy

    if not payloads:
        raise ValueError("combine_runs needs at least one run")
    _one_signature(payloads, "combined")
    ordered = sorted(payloads, key=lambda p: p.get("datetime") or "")
    benches: dict[str, dict] = {}
    states: dict[str, dict] = {}
    for payload in ordered:
        for bench in payload.get("benchmarks", []):
            if case_state(bench) != State.INTERRUPTED or bench["name"] not in benches:  # interrupted never wins
                benches[bench["name"]] = bench
        for state in record.states(payload):
            states[stated_case_name(state)] = state
    combined = copy.deepcopy(ordered[-1])
    combined["benchmarks"] = list(benches.values())
    qb = combined.setdefault("quantbench", {})
    qb["states"] = [s for name, s in states.items() if name not in benches]
    qb["throttled"] = any(record.section(p).get("throttled") for p in ordered)
    qb["run_ids"] = _sources(ordered)
    qb["combined_from"] = [{"datetime": p.get("datetime"), "commit": record.commit(p).get("id"),
                            "dirty": record.commit(p).get("dirty"),
                            "args": record.section(p).get("args"),
                            "measured": len(p.get("benchmarks", []))} for p in ordered]
    if not qb.get("crossover"):
        crossovers = [row for p in ordered for row in record.section(p).get("crossover") or []]
        if crossovers:
            qb["crossover"] = crossovers
    return combined


def combine_group(payloads: list[dict]) -> dict:
    """The shards of one sharded run (``--qb-shard I/N``, one group id) -> one run: their cases
    combined, and each case planned for a shard that was not stored stated ``missing`` with the shard
    named, so that a gate reads it as missing, never as a regression. Pure."""
    shards = [record.section(p).get("shard") or {} for p in payloads]
    group, count = shards[-1].get("group"), int(shards[-1].get("count") or 1)
    combined = combine_runs(payloads)
    present = sorted({int(s.get("index") or 0) for s in shards})
    missing = [i for i in range(1, count + 1) if i not in present]
    plan = {}
    for shard in shards:  # every shard stores the whole plan; any of them names the missing cases
        plan.update(shard.get("cases") or {})
    measured = {b["name"] for b in combined.get("benchmarks", [])} | {stated_case_name(s) for s in
                                                                      record.states(combined)}
    qb = combined["quantbench"]
    for index in missing:
        for nodeid in plan.get(str(index), []):
            name = nodeid.split("::")[-1]
            if name not in measured:
                qb["states"].append({"case": name, "nodeid": nodeid, "state": "missing",
                                     "reason": f"shard {index}/{count} of group {group} was not stored (its "
                                               "runner failed or has not finished)"})
    qb.pop("shard", None)  # one run now, not a shard: stored again (history --add), it is not joined twice
    qb["group"] = {"id": group, "shards": count, "stored": present, "missing": missing}
    return combined
