"""Derived facts computed from results (pure; used by the kernel suite and the reports)."""

from __future__ import annotations

import pandas as pd

from ..history import record


def crossover(frame: pd.DataFrame, baseline: str = "torch-fp16") -> pd.DataFrame:
    """For each (model, shape, quantized kernel: int4, int8, fp8): the smallest M from which the kernel is
    no faster than the dense baseline at every larger M measured. ``frame`` columns: shape, K, N, M, kernel,
    time_s, bits.

    'never' = the kernel wins at every M measured; the smallest M = it never wins."""
    rows = []
    dense = {(r.model, r.shape, r.M): r.time_s for r in frame[frame["kernel"] == baseline].itertuples()}
    # each kernel names its bits; a dense one's are null
    quantized = frame["bits"].notna() if "bits" in frame else pd.Series(False, index=frame.index)
    for (model, shape, kernel), group in frame[quantized].groupby(["model", "shape", "kernel"]):
        group = group.sort_values("M")
        wins = []
        for _, row in group.iterrows():
            base = dense.get((model, shape, row["M"]))
            if base is not None:
                wins.append((int(row["M"]), row["time_s"] < base, base / row["time_s"]))
        if not wins:
            continue
        loses_from = None
        for m, win, _ in reversed(wins):
            if win:
                break
            loses_from = m
        best = max(wins, key=lambda w: w[2])
        rows.append({"model": model, "shape": shape, "K": int(group["K"].iloc[0]), "N": int(group["N"].iloc[0]),
                     "kernel": kernel, "crossover_M": loses_from if loses_from is not None else "never",
                     "speedup_at_min_M": next((s for m, _, s in wins if m == min(w[0] for w in wins)), None),
                     "best_speedup": best[2], "best_M": best[0]})
    return pd.DataFrame(rows, columns=COLUMNS)


# The table's columns in their order: a stored table read back from a JSONB column has its keys reordered.
COLUMNS = ["model", "shape", "K", "N", "kernel", "crossover_M", "speedup_at_min_M", "best_speedup", "best_M"]


def kernel_frame(benchmarks: list[dict]) -> pd.DataFrame:
    """pytest-benchmark entries of the kernel suite -> one row per case."""
    rows = []
    for bench in benchmarks:
        info = record.case_info(bench)
        if info.get("suite") != "kernels":
            continue
        rows.append({"model": info["model"], "shape": info["shape"], "K": info["K"], "N": info["N"], "M": info["M"],
                     "kernel": info["kernel"],
                     "time_s": info["time_per_call_s"], "tflops": info["tflops"], "gbps": info["gbps"],
                     "pct_peak_tflops": info.get("pct_peak_tflops"), "pct_peak_gbps": info.get("pct_peak_gbps"),
                     "intensity": info["arithmetic_intensity"], "bits": info.get("bits"),
                     "path": ran_path(str(info.get("path") or ""))})
    return pd.DataFrame(rows)


# Paths a kernel case recorded that were not what ran, with what did: the record stays as it was written, the
# guide names what ran. quantbench before the fix of AutoAWQ's GEMM input passed it [M, K]; AutoAWQ's switch
# (x.shape[0] * x.shape[1] >= 1024, meant for [B, T, K]) read M * K >= 2048 at every spec shape and every M, so
# awq_ext's and Triton's GEMM kernels never ran: each case timed the dequantize kernel plus torch.matmul.
RECORDED_NOT_RAN = {
    "awq_gemm_triton (dequantize+matmul when M >= 1024)":
        "awq_dequantize_triton + torch.matmul at every M (recorded as 'awq_gemm_triton': the suite's 2-D input "
        "sent every M down AutoAWQ's dequantize path)",
    "awq_ext.gemm_forward_cuda (dequantize+matmul when M >= 1024)":
        "awq_ext.dequantize_weights_cuda + torch.matmul at every M (recorded as 'awq_ext.gemm_forward_cuda': the "
        "suite's 2-D input sent every M down AutoAWQ's dequantize path)",
}


def ran_path(recorded: str) -> str:
    """What a kernel case ran, from what it recorded (RECORDED_NOT_RAN corrects the paths known to be wrong)."""
    return RECORDED_NOT_RAN.get(recorded, recorded)
