"""A run as a table: one row per case (measured or stated), and the environment fields the gate
and the guide select on. pandas, no torch."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import State
from . import record
from .store import INTERRUPTED_REASON, load_run

# Facts a case measures once, not per round (no spread to test: the gate decides on the ratio).
# The resident weight bytes are exact, so they catch on any machine, CPU CI included, the seed's
# failure: a quantized format that ends up holding dense weights (compressed-tensors int4
# decompressing on its first forward) saves no memory, whatever its throughput.
ONCE_PER_CASE_METRICS = ("peak_memory_bytes", "weight_bytes_after_first_forward")
CASE_COLUMNS = ["model", "format", "batch", "prompt_len", "new_tokens", "phase", "kernel_name", "K", "N", "M"]


def per_round_values(bench: dict, metric: str, data: list[float] | None = None) -> list[float]:
    """Per-round values of a metric: rate metrics are work / round time, time metrics the times, and a
    metric another program measured in each round (the serving client's TTFT percentiles) its stored values.
    ``data`` replaces the benchmark's own round times (one run's share of a merged benchmark)."""
    info = record.case_info(bench)
    reported = (info.get("round_values") or {}).get(metric)
    if reported is not None:
        return list(reported) if data is None else _run_share(reported, bench, data)
    if data is None:
        data = (bench.get("stats") or {}).get("data") or []
    rates = info.get("rate_metrics") or {}
    if metric in rates:
        return [rates[metric] / t for t in data if t > 0]
    if metric in (info.get("time_metrics") or []):
        return list(data)
    return []


def _run_share(values: list[float], bench: dict, data: list[float]) -> list[float]:
    """One run's share of a merged case's reported per-round values: merged rounds are stored run after
    run, so the run whose round times are ``data`` holds the values at the same positions."""
    runs = record.case_info(bench).get("run_round_times_s") or []
    start = 0
    for run in runs:
        if run is data or run == data:
            return list(values[start:start + len(run)])
        start += len(run)
    return []


def case_state(bench: dict) -> str:
    """A stored benchmark's state; no extra_info at all (files written before quantbench marked it)
    means the case was cut off inside its timed rounds."""
    info = record.case_info(bench)
    return info.get("state", State.OK if info else State.INTERRUPTED)


def stated_case_name(state: dict) -> str:
    """The test name of a stated case (unsupported, oom, ...), as its benchmark would be named."""
    return state.get("nodeid", "").split("::")[-1] or state.get("case")


def run_frame(payload: dict, path: Path | None = None) -> pd.DataFrame:
    """One row per case (measured or stated) of one run."""
    machine = record.machine(payload)
    device = machine.get("device") or {}
    versions = machine.get("versions") or {}
    common = {
        "file": str(path) if path is not None else None,
        "signature": machine.get("signature"),
        "datetime": payload.get("datetime"),
        "commit": record.commit(payload).get("id"),
        "dirty": record.commit(payload).get("dirty"),
        "device": device.get("gpu") or device.get("cpu"),
        "stack": versions.get("stack"),
        "throttled": record.section(payload).get("throttled"),
    }
    rows = []
    for bench in payload.get("benchmarks", []):
        info = dict(record.case_info(bench))
        stats = bench.get("stats") or {}
        state = case_state(bench)
        if state == State.INTERRUPTED:
            info.setdefault("reason", INTERRUPTED_REASON)
        row = {**common, "name": bench.get("name"), "group": bench.get("group"), "state": state,
               "median_s": stats.get("median"), "iqr_s": stats.get("iqr"), "q1_s": stats.get("q1"),
               "q3_s": stats.get("q3"), "stddev_s": stats.get("stddev"),
               "mean_s": stats.get("mean"), "rounds": stats.get("rounds"), "round_times_s": stats.get("data")}
        for key, value in info.items():
            if not isinstance(value, (dict, list)):
                row[key] = value
        for key, value in (info.get("token_latency_s") or {}).items():
            row[f"token_latency_{key}_s"] = value
        row["metrics"] = sorted(set(info.get("rate_metrics") or {}) | set(info.get("time_metrics") or [])
                                | set(info.get("round_values") or {}) | {k for k in ONCE_PER_CASE_METRICS if k in info})
        row["_bench"] = bench
        rows.append(row)
    for state in record.states(payload):
        name = stated_case_name(state)
        rows.append({**common, "name": name, **{k: v for k, v in state.items() if k != "nodeid"}})
    return pd.DataFrame(rows)


def load_frame(paths) -> pd.DataFrame:
    """Many history files -> one DataFrame (bad files raise BadHistory naming the file)."""
    return frame_of([(p, load_run(p)) for p in paths])


def frame_of(runs) -> pd.DataFrame:
    """(where, payload) pairs -> one DataFrame, the ``file`` column naming where each run came from."""
    frames = [run_frame(payload, where) for where, payload in runs]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def filter_frame(frame: pd.DataFrame, **equals) -> pd.DataFrame:
    """``filter_frame(df, signature=..., model='tiny', format='bf16', batch=1)``; a metric= keeps rows
    that carry that metric."""
    metric = equals.pop("metric", None)
    mask = pd.Series(True, index=frame.index)
    for column, value in equals.items():
        if value is not None:
            mask &= frame[column] == value
    if metric is not None:
        mask &= frame["metrics"].apply(lambda ms: isinstance(ms, list) and metric in ms)
    return frame[mask]


COMPARABILITY_FIELDS = ("device.gpu", "device.gpu_count", "device.driver", "device.cuda", "device.cpu",
                        "versions.torch", "versions.transformers", "versions.autoawq",
                        "versions.compressed-tensors", "versions.triton", "versions.awq_ext")


def environment_fields(payload: dict) -> dict:
    machine = record.machine(payload)
    flat = {}
    for section in ("device", "versions"):
        for key, value in (machine.get(section) or {}).items():
            flat[f"{section}.{key}"] = value
    return flat


def hardware(payload: dict) -> tuple:
    """The machine's hardware as the run saw it (what an upgrade of drivers or libraries leaves alone):
    ('gpu', model, count) where the run measured on a GPU, else ('cpu', model, count)."""
    env = environment_fields(payload)
    if env.get("device.gpu"):
        return ("gpu", env.get("device.gpu"), env.get("device.gpu_count"))
    return ("cpu", env.get("device.cpu"), env.get("device.cpu_count"))


def device_kind(payload: dict) -> str:
    """'gpu' or 'cpu': what device overrides in the thresholds select on."""
    return hardware(payload)[0]


def stack_name(payload: dict) -> str | None:
    return environment_fields(payload).get("versions.stack")

