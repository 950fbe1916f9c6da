"""What the gate compares, read from stored runs: one Sample per (case, metric), and the kernel
each case ran."""

from __future__ import annotations

from statistics import median

from ..errors import State
from ..history import record
from ..history.frame import ONCE_PER_CASE_METRICS, case_state, per_round_values, stated_case_name
from ..history.store import RUN_ROUNDS_KEY
from .decisions import OBSERVED, Sample


def samples(payload: dict) -> dict:
    """(case name, metric) -> gate.Sample for every measured metric and every stated case."""
    out = {}
    for bench in payload.get("benchmarks", []):
        info = record.case_info(bench)
        metrics = (list(info.get("rate_metrics") or {}) + list(info.get("time_metrics") or [])
                   + list(info.get("round_values") or {}))
        for metric in metrics:
            rounds = per_round_values(bench, metric)
            runs = tuple(median(values) for values in (per_round_values(bench, metric, data)
                                                       for data in info.get(RUN_ROUNDS_KEY) or []) if values)
            value = median(runs) if runs else median(rounds) if rounds else info.get(metric)
            if value is not None:
                out[(bench["name"], _under_slo(metric, info))] = Sample(float(value), tuple(rounds), runs=runs)
        for metric in ONCE_PER_CASE_METRICS:
            if info.get(metric):
                out[(bench["name"], metric)] = Sample(float(info[metric]))
    for state in record.states(payload):
        name = stated_case_name(state)
        out[(name, "*")] = Sample(float("nan"), (), state.get("state", "unsupported"), state.get("reason", ""))
    return out


GOODPUT = "request_goodput"


def _under_slo(metric: str, info: dict) -> str:
    """Goodput counts the requests that met an SLO: its name carries the SLO, so a run under another SLO (the
    thresholds file changed) is never compared with it (the decision reads new / missing, naming both SLOs)."""
    if metric != GOODPUT:
        return metric
    slo = info.get("slo") or {}
    bounds = ", ".join(f"{key} <= {value:g}" for key, value in sorted(slo.items())) if isinstance(slo, dict) else ""
    return f"{metric} [SLO {bounds or 'none'}]"


def kernels_ran(payload: dict) -> dict[str, str]:
    """Case name -> the code path that actually ran, as the run recorded it: a generation case's
    ``kernel`` (its format's account of the matmul, e.g. "triton.awq_gemm ..."), a kernel-suite
    case's ``path`` (its name is the kernel asked for; the path is what that turned out to be)."""
    ran = {}
    for bench in payload.get("benchmarks", []):
        info = record.case_info(bench)
        kernel = info.get("path") if info.get("suite") == "kernels" else info.get("kernel")
        if kernel and case_state(bench) == State.OK:
            ran[bench["name"]] = str(kernel) + _observed(info)
    return ran


def _observed(info: dict) -> str:
    """The kernel fields observed at the case's own shape (bench.kernel_fields), as the gate compares them."""
    if info.get("kernel_naive_gemm") is None and info.get("kernel_dequantizes") is None:
        return ""
    onednn = sorted({" ".join(p.split(" ")[:2]) for p in info.get("kernel_onednn") or []})  # kind and impl
    return (f"{OBSERVED}ops {', '.join(info.get('kernel_ops') or []) or 'none'}; oneDNN {', '.join(onednn) or 'none'}"
            f"; dequantizes {info.get('kernel_dequantizes')}")


def merged_samples(payloads: list[dict]) -> dict:
    """Several baseline runs -> one Sample per key: the median of the run medians (robust to one
    slow run), the run medians themselves (what the gate tests when both sides hold enough runs)
    and the pooled rounds (what it tests otherwise). A run that is itself a merge of several
    brings its own run medians."""
    per_run = [samples(p) for p in payloads]
    merged = {}
    for key in sorted(set().union(*per_run)) if per_run else []:
        got = [s[key] for s in per_run if key in s]
        ok = [g for g in got if g.state == State.OK]
        if not ok:
            merged[key] = got[-1]
            continue
        rounds = tuple(v for g in ok for v in g.rounds)
        runs = tuple(r for g in ok if g.rounds or g.runs for r in (g.runs or (g.value,)))
        value = median(runs) if runs else median(g.value for g in ok)
        merged[key] = Sample(float(value), rounds, runs=runs)
    return merged

