"""Findings written from the data (pure functions on DataFrames; no plotting, no I/O)."""

from __future__ import annotations

import pandas as pd

BASELINE = "bf16"
QUANTIZED_PREFIXES = ("awq", "ct-")
# describe_ct_path writes "... -> torch.matmul, behind compressed-tensors offload dispatch on N modules"
DISPATCH_MARK = "behind "
WITHOUT_DISPATCH = {"ct-w4a16": "ct-w4a16-nodispatch"}  # the same checkpoint and load, dispatch removed


def is_quantized(fmt: str) -> bool:
    return str(fmt).startswith(QUANTIZED_PREFIXES)


def decode_table(gen: pd.DataFrame, model: str, prompt_len: int) -> pd.DataFrame:
    """format x batch -> decode tokens/s."""
    rows = gen[(gen["model"] == model) & (gen["prompt_len"] == prompt_len) & (gen["phase"] == "decode")]
    return rows.pivot_table(index="format", columns="batch", values="decode_tokens_per_s", aggfunc="median")


def speedup_table(gen: pd.DataFrame, model: str, prompt_len: int, phase: str = "decode") -> pd.DataFrame:
    """format x batch -> tokens/s relative to bf16 measured in the same run."""
    metric = f"{phase}_tokens_per_s"
    rows = gen[(gen["model"] == model) & (gen["prompt_len"] == prompt_len) & (gen["phase"] == phase)]
    table = rows.pivot_table(index="format", columns="batch", values=metric, aggfunc="median")
    if BASELINE not in table.index:
        return pd.DataFrame()
    return table.div(table.loc[BASELINE], axis=1)


def fastest_by_batch(table: pd.DataFrame) -> list[tuple[int, int, str]]:
    """Runs of consecutive batch sizes with the same fastest format: [(first, last, format)]."""
    runs: list[list] = []
    for batch in sorted(table.columns):
        column = table[batch].dropna()
        if column.empty:
            continue
        best = column.idxmax()
        if runs and runs[-1][2] == best:
            runs[-1][1] = batch
        else:
            runs.append([batch, batch, best])
    return [tuple(r) for r in runs]


def quantization_stops_paying(speedups: pd.DataFrame) -> int | None | str:
    """Smallest batch from which no quantized format beats bf16 at any larger batch measured;
    'never' if some quantized format still wins at the largest batch; None without data."""
    quant = speedups[[is_quantized(f) for f in speedups.index]]
    if quant.empty:
        return None
    best = quant.max(axis=0).sort_index()
    stops = None
    for batch in reversed(list(best.index)):
        if best[batch] > 1.0:
            break
        stops = batch
    return stops if stops is not None else "never"


def flags(gen: pd.DataFrame) -> list[str]:
    """The seed's failure modes, found automatically."""
    out = []
    ok = gen[gen["state"] == "ok"] if "state" in gen else gen
    for (model, prompt), rows in ok.groupby(["model", "prompt_len"]):
        speed = speedup_table(ok, model, prompt, "decode")
        for fmt in speed.index:
            if not is_quantized(fmt):
                continue
            slower = speed.loc[fmt][speed.loc[fmt] < 1.0].dropna()
            if len(slower):
                worst_batch = slower.idxmin()
                out.append(f"SLOWER THAN BF16: {model} p{prompt}: {fmt} decodes {1 / slower.min():.2f}x slower "
                           f"than bf16 at batch {worst_batch} (slower at batch {', '.join(map(str, slower.index))})")
    for model, rows in ok.groupby("model"):
        by_format = rows.groupby("format")[["weight_bytes_after_load", "weight_bytes_after_first_forward"]].max()
        if BASELINE not in by_format.index:
            continue
        dense = by_format.loc[BASELINE, "weight_bytes_after_first_forward"]
        for fmt, row in by_format.iterrows():
            if is_quantized(fmt) and row["weight_bytes_after_first_forward"] >= 0.9 * dense:
                out.append(f"NO MEMORY SAVING: {model}: {fmt} holds {row['weight_bytes_after_first_forward'] / 2**20:.1f} "
                           f"MiB of weights after the first forward vs {dense / 2**20:.1f} MiB for bf16 "
                           f"({row['weight_bytes_after_load'] / 2**20:.1f} MiB right after load)")
    if "kernel" in ok:
        for (model, fmt), rows in ok.groupby(["model", "format"]):
            kernel = str(rows["kernel"].iloc[0])
            if "naive" in kernel:
                out.append(f"NAIVE FALLBACK: {model}: {fmt} ran AutoAWQ's naive dequantize+matmul path ({kernel})")
            if DISPATCH_MARK in kernel:
                out.append(f"LIBRARY DISPATCH: {model}: {fmt} runs behind {kernel.split(DISPATCH_MARK)[1]}: "
                           f"host work on every module call" + _dispatch_cost(ok, model, fmt))
    return out


def _dispatch_cost(ok: pd.DataFrame, model: str, fmt: str) -> str:
    """'; without it (<variant>, same weights) decode ran a-bx faster (batch ...)' where both were measured."""
    variant = WITHOUT_DISPATCH.get(fmt)
    decode = ok[(ok["model"] == model) & (ok["phase"] == "decode")]
    table = decode.pivot_table(index="format", columns=["prompt_len", "batch"], values="decode_tokens_per_s",
                               aggfunc="median")
    if variant is None or fmt not in table.index or variant not in table.index:
        return ""
    ratios = (table.loc[variant] / table.loc[fmt]).dropna()
    if ratios.empty:
        return ""
    batches = sorted({batch for _, batch in ratios.index})
    return (f"; without it ({variant}, same dense weights) decode ran {ratios.min():.2f}-{ratios.max():.2f}x "
            f"as fast (batch {', '.join(map(str, batches))})")
