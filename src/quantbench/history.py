"""Schema-versioned run history: pytest-benchmark JSON files, one folder per machine signature.

Files stay plain pytest-benchmark JSON (``pytest-benchmark compare`` reads them); quantbench adds
``machine_info.quantbench`` (environment, signature, git) and a top-level ``quantbench`` section
(schema version, states of cases that produced no number, telemetry). No torch import here.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from .errors import BadHistory

SCHEMA_VERSION = 1
INTERRUPTED_REASON = "cut off inside its timed rounds (a time limit or Ctrl-C): its partial times are no result"
RUN_ROUNDS_KEY = "run_round_times_s"  # extra_info of a merged benchmark: which round times came from which run
MIGRATE_FIX = "re-run the benchmark with this quantbench to write a current file (older files are kept as they are)"


# ----------------------------------------------------------------------------- writing
def write_atomic(path: Path, payload: dict) -> Path:
    """Write JSON to a temp file in the same folder, fsync, then rename: readers see all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=1, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def run_filename(payload: dict, at_run_time: bool = False) -> str:
    """Sortable by time, unique across concurrent writers (uuid), and says which commit. Named by the
    time of saving (the end of the run), or with ``at_run_time`` by the run's own start time, so that
    a run stored later (``quantbench history --add``) still sorts where it was measured and is not
    taken for the newest by 'latest'."""
    when = datetime.now(UTC)
    if at_run_time and payload.get("datetime"):
        try:
            when = datetime.fromisoformat(payload["datetime"])
        except (TypeError, ValueError):
            pass  # not an ISO time: the time of saving
        else:  # pytest-benchmark writes UTC; a naive time is taken as UTC too
            when = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    stamp = when.strftime("%Y%m%dT%H%M%S%f")
    commit = ((payload.get("commit_info") or {}).get("id") or "nocommit")[:8]
    return f"{stamp}_{commit}_{uuid.uuid4().hex[:8]}.json"


def signature(payload: dict) -> str:
    return ((payload.get("machine_info") or {}).get("quantbench") or {}).get("signature") or "unknown"


def save_run(root: Path, payload: dict, at_run_time: bool = False) -> Path:
    """Store one run under root/<signature>/ and return its path. Never overwrites."""
    return write_atomic(Path(root) / signature(payload) / run_filename(payload, at_run_time), payload)


# ----------------------------------------------------------------------------- reading
def load_run(path: Path) -> dict:
    """Read and validate one history file; every failure is a BadHistory naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BadHistory(path, "no such history file",
                         "check the path (`quantbench history --history DIR` lists the stored runs)") from None
    except UnicodeDecodeError:
        raise BadHistory(path, "not a text file", "pass a pytest-benchmark JSON file written by quantbench") from None
    if not text.strip():
        raise BadHistory(path, "empty file", "delete it; it holds no run")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        # The parser ran off the end: the file stops early. A file cut inside a string reports the
        # string's start instead (only an unclosed string at the end of the text is "unterminated"),
        # one cut inside a literal ("nul") the literal's start: on the file's last line, where an
        # indented pytest-benchmark file (one value per line) cannot have a fault mid-file.
        body = text.rstrip()
        last_line = body.count("\n") + 1
        if (exc.pos >= len(body) or exc.msg.startswith("Unterminated string")
                or (last_line > 1 and exc.lineno == last_line)):
            raise BadHistory(path, f"truncated JSON (ends early at {where})",
                             "the run that wrote it was interrupted; delete it or restore it from CI artifacts") from None
        raise BadHistory(path, f"corrupt JSON ({exc.msg} at {where})",
                         "delete it or restore it from CI artifacts") from None
    if not isinstance(payload, dict) or "benchmarks" not in payload:
        raise BadHistory(path, "not a pytest-benchmark JSON file (no 'benchmarks' list)",
                         "pass a file written by pytest --benchmark-json or quantbench --qb-history")
    section = payload.get("quantbench")
    version = section.get("schema_version") if isinstance(section, dict) else None
    if version is None:
        raise BadHistory(path, "no quantbench schema version (written by plain pytest-benchmark or a "
                         "pre-release quantbench)", MIGRATE_FIX)
    if version < SCHEMA_VERSION:
        raise BadHistory(path, f"old schema version {version} (this quantbench reads {SCHEMA_VERSION})", MIGRATE_FIX)
    if version > SCHEMA_VERSION:
        raise BadHistory(path, f"schema version {version} is newer than this quantbench ({SCHEMA_VERSION})",
                         "upgrade quantbench")
    return payload


def run_files(root: Path, signature_name: str | None = None) -> list[Path]:
    root = Path(root)
    # Run files are named <timestamp>_<commit>_<uuid>.json; peaks.json and others sit beside them.
    pattern = f"{signature_name}/[0-9]*_*.json" if signature_name else "*/[0-9]*_*.json"
    # Oldest first by name (<UTC timestamp>_...), not by path: across signature folders the path sorts
    # by the folder first, and 'latest' would be the newest run of the alphabetically last stack.
    return sorted((p for p in root.glob(pattern) if not p.name.startswith(".")), key=lambda p: (p.name, str(p)))


def latest_run(root: Path, signature_name: str | None = None) -> Path:
    files = run_files(root, signature_name)
    if not files:
        where = Path(root) / signature_name if signature_name else Path(root)
        raise BadHistory(where, "no history files (empty baseline folder)",
                         "run the benchmark with --qb-history on the baseline first, or pass --baseline PATH")
    return files[-1]


# ----------------------------------------------------------------------------- frames
# Facts a case measures once, not per round (no spread to test: the gate decides on the ratio).
# The resident weight bytes are exact, so they catch on any machine, CPU CI included, the seed's
# failure: a quantized format that ends up holding dense weights (compressed-tensors int4
# decompressing on its first forward) saves no memory, whatever its throughput.
ONCE_PER_CASE_METRICS = ("peak_memory_bytes", "weight_bytes_after_first_forward")
CASE_COLUMNS = ["model", "format", "batch", "prompt_len", "new_tokens", "phase", "kernel_name", "K", "N", "M"]


def per_round_values(bench: dict, metric: str, data: list[float] | None = None) -> list[float]:
    """Per-round values of a metric: rate metrics are work / round time, time metrics the times.
    ``data`` replaces the benchmark's own round times (one run's share of a merged benchmark)."""
    info = bench.get("extra_info") or {}
    if data is None:
        data = (bench.get("stats") or {}).get("data") or []
    rates = info.get("rate_metrics") or {}
    if metric in rates:
        return [rates[metric] / t for t in data if t > 0]
    if metric in (info.get("time_metrics") or []):
        return list(data)
    return []


def case_state(bench: dict) -> str:
    """A stored benchmark's state; no extra_info at all (files written before quantbench marked it)
    means the case was cut off inside its timed rounds."""
    info = bench.get("extra_info") or {}
    return info.get("state", "ok" if info else "interrupted")


def stated_case_name(state: dict) -> str:
    """The test name of a stated case (unsupported, oom, ...), as its benchmark would be named."""
    return state.get("nodeid", "").split("::")[-1] or state.get("case")


def run_frame(payload: dict, path: Path | None = None) -> pd.DataFrame:
    """One row per case (measured or stated) of one run."""
    machine = (payload.get("machine_info") or {}).get("quantbench") or {}
    device = machine.get("device") or {}
    versions = machine.get("versions") or {}
    common = {
        "file": str(path) if path else None,
        "signature": machine.get("signature"),
        "datetime": payload.get("datetime"),
        "commit": (payload.get("commit_info") or {}).get("id"),
        "dirty": (payload.get("commit_info") or {}).get("dirty"),
        "device": device.get("gpu") or device.get("cpu"),
        "stack": versions.get("stack"),
        "throttled": (payload.get("quantbench") or {}).get("throttled"),
    }
    rows = []
    for bench in payload.get("benchmarks", []):
        info = dict(bench.get("extra_info") or {})
        stats = bench.get("stats") or {}
        state = case_state(bench)
        if state == "interrupted":
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
                                | {k for k in ONCE_PER_CASE_METRICS if k in info})
        row["_bench"] = bench
        rows.append(row)
    for state in (payload.get("quantbench") or {}).get("states", []):
        name = stated_case_name(state)
        rows.append({**common, "name": name, **{k: v for k, v in state.items() if k != "nodeid"}})
    return pd.DataFrame(rows)


def readable(paths, warn) -> list[Path]:
    """The paths that load; ``warn(BadHistory)`` for each that does not. For commands that read a
    whole history folder (list, report, 'latest'): one damaged file is reported and left in place,
    and the other runs are still read. A file named explicitly is never skipped: load_run raises."""
    good = []
    for path in paths:
        try:
            load_run(path)
        except BadHistory as exc:
            warn(exc)
        else:
            good.append(Path(path))
    return good


def load_frame(paths) -> pd.DataFrame:
    """Many history files -> one DataFrame (bad files raise BadHistory naming the file)."""
    frames = [run_frame(load_run(p), p) for p in paths]
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


# ----------------------------------------------------------------------------- gate inputs
def samples(payload: dict) -> dict:
    """(case name, metric) -> gate.Sample for every measured metric and every stated case."""
    from statistics import median

    from .gate import Sample

    out = {}
    for bench in payload.get("benchmarks", []):
        info = bench.get("extra_info") or {}
        metrics = list(info.get("rate_metrics") or {}) + list(info.get("time_metrics") or [])
        for metric in metrics:
            rounds = per_round_values(bench, metric)
            runs = tuple(median(values) for values in (per_round_values(bench, metric, data)
                                                       for data in info.get(RUN_ROUNDS_KEY) or []) if values)
            value = median(runs) if runs else median(rounds) if rounds else info.get(metric)
            if value is not None:
                out[(bench["name"], metric)] = Sample(float(value), tuple(rounds), runs=runs)
        for metric in ONCE_PER_CASE_METRICS:
            if info.get(metric):
                out[(bench["name"], metric)] = Sample(float(info[metric]))
    for state in (payload.get("quantbench") or {}).get("states", []):
        name = stated_case_name(state)
        out[(name, "*")] = Sample(float("nan"), (), state.get("state", "unsupported"), state.get("reason", ""))
    return out


def kernels_ran(payload: dict) -> dict[str, str]:
    """Case name -> the code path that actually ran, as the run recorded it: a generation case's
    ``kernel`` (its format's account of the matmul, e.g. "triton.awq_gemm ..."), a kernel-suite
    case's ``path`` (its name is the kernel asked for; the path is what that turned out to be)."""
    ran = {}
    for bench in payload.get("benchmarks", []):
        info = bench.get("extra_info") or {}
        kernel = info.get("path") if info.get("suite") == "kernels" else info.get("kernel")
        if kernel and case_state(bench) == "ok":
            ran[bench["name"]] = str(kernel)
    return ran


COMPARABILITY_FIELDS = ("device.gpu", "device.gpu_count", "device.driver", "device.cuda", "device.cpu",
                        "versions.torch", "versions.transformers", "versions.autoawq",
                        "versions.compressed-tensors", "versions.triton", "versions.awq_ext")


def environment_fields(payload: dict) -> dict:
    machine = (payload.get("machine_info") or {}).get("quantbench") or {}
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


def merged_samples(payloads: list[dict]) -> dict:
    """Several baseline runs -> one Sample per key: the median of the run medians (robust to one
    slow run), the run medians themselves (what the gate tests when both sides hold enough runs)
    and the pooled rounds (what it tests otherwise). A run that is itself a merge of several
    brings its own run medians."""
    from statistics import median

    from .gate import Sample

    per_run = [samples(p) for p in payloads]
    merged = {}
    for key in sorted(set().union(*per_run)) if per_run else []:
        got = [s[key] for s in per_run if key in s]
        ok = [g for g in got if g.state == "ok"]
        if not ok:
            merged[key] = got[-1]
            continue
        rounds = tuple(v for g in ok for v in g.rounds)
        runs = tuple(r for g in ok if g.rounds or g.runs for r in (g.runs or (g.value,)))
        value = median(runs) if runs else median(g.value for g in ok)
        merged[key] = Sample(float(value), rounds, runs=runs)
    return merged


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
    for payload in payloads:
        for bench in payload.get("benchmarks", []):
            if case_state(bench) == "interrupted":
                continue
            info = bench.get("extra_info") or {}
            # a run that is itself a merge contributes its runs, not one pooled pseudo-run
            runs = info.get(RUN_ROUNDS_KEY) or [(bench.get("stats") or {}).get("data") or []]
            per_run.setdefault(bench["name"], []).extend(list(r) for r in runs if r)
    for bench in merged.get("benchmarks", []):
        runs = per_run.get(bench["name"], [])
        data = sorted(v for run in runs for v in run)
        if not data:
            continue
        if case_state(bench) != "interrupted":  # the gate tests run medians when there are enough runs
            bench["extra_info"][RUN_ROUNDS_KEY] = runs
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
    stored = (payload.get("quantbench") or {}).get("run_ids")
    if stored:
        return set(stored)
    return {f"{payload.get('datetime')}@{(payload.get('commit_info') or {}).get('id')}"}


def _sources(payloads: list[dict]) -> list[str]:
    return sorted(set().union(*(run_ids(p) for p in payloads)))


def runs_in(payload: dict) -> int:
    """How many runs a history file holds: 1, or as many as a merge pooled."""
    return int((payload.get("quantbench") or {}).get("merged_from") or 1)


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
            if case_state(bench) != "interrupted" or bench["name"] not in benches:  # interrupted never wins
                benches[bench["name"]] = bench
        for state in (payload.get("quantbench") or {}).get("states", []):
            states[stated_case_name(state)] = state
    combined = copy.deepcopy(ordered[-1])
    combined["benchmarks"] = list(benches.values())
    qb = combined.setdefault("quantbench", {})
    qb["states"] = [s for name, s in states.items() if name not in benches]
    qb["throttled"] = any((p.get("quantbench") or {}).get("throttled") for p in ordered)
    qb["run_ids"] = _sources(ordered)
    qb["combined_from"] = [{"datetime": p.get("datetime"), "commit": (p.get("commit_info") or {}).get("id"),
                            "dirty": (p.get("commit_info") or {}).get("dirty"),
                            "args": (p.get("quantbench") or {}).get("args"),
                            "measured": len(p.get("benchmarks", []))} for p in ordered]
    if not qb.get("crossover"):
        crossovers = [row for p in ordered for row in (p.get("quantbench") or {}).get("crossover") or []]
        if crossovers:
            qb["crossover"] = crossovers
    return combined
