"""Findings written from the data (pure functions on DataFrames; no plotting, no I/O)."""

from __future__ import annotations

import pandas as pd

from .. import dispatch
from ..errors import State

BASELINE = "bf16"
COMPILED = "+compile"  # the series-name suffix of the transformers+compile runtime
DEFAULT_RUNTIME = "transformers"  # quantbench.runtimes.DEFAULT (this layer reads history only, no torch)


def series_name(fmt, runtime) -> str:
    """What a format on a runtime is called in tables and charts: 'bf16' on transformers (the default
    runtime), 'bf16+compile' on transformers+compile, 'bf16@<runtime>' on any other runtime."""
    if fmt is None or not isinstance(runtime, str) or runtime == DEFAULT_RUNTIME:
        return fmt
    if runtime.startswith(DEFAULT_RUNTIME + "+"):
        return f"{fmt}{runtime[len(DEFAULT_RUNTIME):]}"
    return f"{fmt}@{runtime}"


def with_series_names(frame: pd.DataFrame) -> pd.DataFrame:
    """Generation rows' ``format`` as the series name of their (format, runtime); the format itself stays in
    ``base_format``."""
    if frame.empty or "runtime" not in frame or "format" not in frame:
        return frame
    return frame.assign(base_format=frame["format"],
                        format=[series_name(f, r) for f, r in zip(frame["format"], frame["runtime"])])


def runtime_suffix(fmt: str) -> str:
    """The runtime part of a series name: '+compile', '@vllm', '@vllm+eager', or '' (transformers)."""
    fmt = str(fmt)
    return fmt[fmt.index("@"):] if "@" in fmt else COMPILED if fmt.endswith(COMPILED) else ""


def eager_name(fmt: str) -> str:
    """The format of a series name, without its runtime."""
    suffix = runtime_suffix(fmt)
    return str(fmt)[: -len(suffix)] if suffix else str(fmt)


def same_model_as_eager(fmt: str) -> bool:
    """A transformers+compile series executes the very model (weights, kernel) of its eager format."""
    return runtime_suffix(fmt) == COMPILED


def baseline_for(fmt: str) -> str:
    """bf16 under the same runtime: a compiled format is compared with compiled bf16, a vLLM one with bf16
    on the same vLLM engine variant."""
    return BASELINE + runtime_suffix(fmt)
# describe_ct_path writes "... -> torch.matmul, behind compressed-tensors offload dispatch on N modules"
DISPATCH_MARK = "behind "
# The same checkpoint and load with the library's per-call host work removed, step by step.
WITHOUT_DISPATCH = {"ct-w4a16": (("ct-w4a16-nodispatch", "without it"),
                                 ("ct-w4a16-bare", "without its forward wrappers too"))}


def quantized_formats(frame: pd.DataFrame) -> set[str]:
    """The series whose records name weight bits (a dense format's bits are null): each format says
    whether it is quantized, the report keeps no list of names."""
    if frame.empty or "bits" not in frame:
        return set()
    return set(frame.loc[frame["bits"].notna(), "format"])


def decode_table(gen: pd.DataFrame, model: str, prompt_len: int) -> pd.DataFrame:
    """format x batch -> decode tokens/s."""
    rows = gen[(gen["model"] == model) & (gen["prompt_len"] == prompt_len) & (gen["phase"] == "decode")]
    return rows.pivot_table(index="format", columns="batch", values="decode_tokens_per_s", aggfunc="median")


def spread_table(gen: pd.DataFrame, model: str, prompt_len: int) -> pd.DataFrame:
    """(phase, format) x batch -> the round-to-round spread of the case in %: the interquartile range
    of its round times over their median (the same fraction of its tokens/s, to first order)."""
    rows = gen[(gen["model"] == model) & (gen["prompt_len"] == prompt_len)]
    rows = rows[rows["iqr_s"].notna() & (rows["median_s"] > 0)] if "iqr_s" in rows else rows[:0]
    if rows.empty:
        return pd.DataFrame()
    rows = rows.assign(spread_pct=100.0 * rows["iqr_s"] / rows["median_s"])
    return rows.pivot_table(index=["phase", "format"], columns="batch", values="spread_pct", aggfunc="median")


def speedup_table(gen: pd.DataFrame, model: str, prompt_len: int, phase: str = "decode") -> pd.DataFrame:
    """format x batch -> tokens/s relative to bf16 under the same runtime, measured in the same run
    (formats whose baseline was not measured are left out)."""
    metric = f"{phase}_tokens_per_s"
    rows = gen[(gen["model"] == model) & (gen["prompt_len"] == prompt_len) & (gen["phase"] == phase)]
    table = rows.pivot_table(index="format", columns="batch", values=metric, aggfunc="median")
    ratios = [(table.loc[fmt] / table.loc[baseline_for(fmt)]).rename(fmt) for fmt in table.index
              if baseline_for(fmt) in table.index]
    return pd.DataFrame(ratios) if ratios else pd.DataFrame()


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


def quantization_stops_paying(speedups: pd.DataFrame, quantized: set[str]) -> int | None | str:
    """Smallest batch from which no quantized format beats bf16 at any larger batch measured;
    'never' if some quantized format still wins at the largest batch; None without data."""
    quant = speedups[[f in quantized for f in speedups.index]]
    if quant.empty:
        return None
    best = quant.max(axis=0).sort_index()
    stops = None
    for batch in reversed(list(best.index)):
        if best[batch] > 1.0:
            break
        stops = batch
    return stops if stops is not None else "never"


WEIGHT_COLUMNS = ("weight_bytes_after_load", "weight_bytes_after_first_forward", "decode_weight_gbps")
# Records of vLLM's engine written before the suite looked for weights vLLM packs away: on a CPU vLLM empties
# every dense linear's weight tensor (its oneDNN / sgl handle holds it), so their byte counts missed those.
UNCHECKED_VLLM_WEIGHTS = ("recorded before quantbench checked for weights vLLM packs away (its CPU dispatch empties "
                          "each dense linear's tensor): the bytes counted missed them")


def unknown_weights(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with the weight figures of every row whose weights the suite could not see blanked (NaN: unknown,
    never a number a finding rests on) and the reason in ``weights_unknown``."""
    if rows.empty or "runtime" not in rows:
        return rows
    rows = rows.copy()
    # a vLLM record says "" where it counted every weight, the reason where it could not; an older one says nothing
    reason = rows["weights_unknown"] if "weights_unknown" in rows else pd.Series(None, index=rows.index, dtype=object)
    old_vllm = rows["runtime"].astype(str).str.startswith("vllm") & reason.isna()
    reason = reason.where(~old_vllm, UNCHECKED_VLLM_WEIGHTS)
    unknown = reason.notna() & (reason.astype(str) != "")
    rows["weights_unknown"] = reason.where(unknown)
    for column in WEIGHT_COLUMNS:
        if column in rows:
            rows[column] = rows[column].where(~unknown)
    return rows


def unknown_weight_lines(ok: pd.DataFrame) -> list[str]:
    """One WEIGHTS UNKNOWN line per model and reason: the formats whose weight bytes the suite could not count."""
    if "weights_unknown" not in ok:
        return []
    unknown = ok[ok["weights_unknown"].notna()]
    return [f"WEIGHTS UNKNOWN: {model}: {', '.join(sorted(rows['format'].unique()))}: {reason} (no memory or "
            "bandwidth finding rests on them)"
            for (model, reason), rows in unknown.groupby(["model", "weights_unknown"])]


def decode_bandwidth(gen: pd.DataFrame, model: str, prompt_len: int, ceiling_gbps: float | None) -> pd.DataFrame:
    """format x batch -> the rate at which decode read the model's weights (every weight once per step:
    gpt-fast's achieved bandwidth), as % of the copy ceiling; GB/s where no ceiling is known.
    At small batch, memory-bound decode should approach the ceiling: far below it, something else
    (the host launching kernels, a slow kernel) sets the pace."""
    rows = gen[(gen["model"] == model) & (gen["prompt_len"] == prompt_len) & (gen["phase"] == "decode")]
    if "decode_weight_gbps" not in rows or rows["decode_weight_gbps"].isna().all():
        return pd.DataFrame()
    table = rows.pivot_table(index="format", columns="batch", values="decode_weight_gbps", aggfunc="median")
    return table * 100.0 / ceiling_gbps if ceiling_gbps else table


def bandwidth_lines(gen: pd.DataFrame, ceiling_gbps: float | None, ceiling_source: str = "") -> list[str]:
    """Per model and prompt, at the smallest batch measured: each format's decode weight bandwidth and its
    share of the copy ceiling, fastest first (the seed's 'decode bandwidth as % of peak at batch 1')."""
    out: list[str] = []
    ok = gen[gen["state"] == State.OK] if "state" in gen else gen
    if ok.empty or "decode_weight_gbps" not in ok:
        return out
    decode = ok[(ok["phase"] == "decode") & ok["decode_weight_gbps"].notna()]
    for (model, prompt), rows in decode.groupby(["model", "prompt_len"]):
        batch = int(rows["batch"].min())
        rates = (rows[rows["batch"] == batch].groupby("format")["decode_weight_gbps"].median()
                 .sort_values(ascending=False))
        parts = [f"{fmt} {gbps:.3g} GB/s" + (f" ({100.0 * gbps / ceiling_gbps:.1f}%)" if ceiling_gbps else "")
                 for fmt, gbps in rates.items()]
        ceiling = (f", and % of the {ceiling_gbps:.0f} GB/s copy ceiling"
                   + (f" ({ceiling_source})" if ceiling_source else "")
                   if ceiling_gbps else " (no ceiling stored: run `quantbench peaks`)")
        out.append(f"DECODE BANDWIDTH: {model} p{prompt} batch {batch}: weights read per second{ceiling}: "
                   + ", ".join(parts))
    return out


# AutoAWQ's guide: GEMV beats GEMM only at batch 1. Pairs of formats that run the two kernels of one family.
GEMV_PAIRS = (("awq-gemv", "awq-gemm", "AutoAWQ's modules"),
              ("awq-gemv-hf", "awq-gemm-hf-gemm", "AutoAWQ's CUDA kernels as gptqmodel builds them"))


def gemv_vs_gemm(gen: pd.DataFrame) -> list[str]:
    """For each GEMV/GEMM pair: GEMV's decode tokens/s over GEMM's by batch (per model and prompt), and
    the batches where GEMV is faster; or, where GEMM ran and GEMV did not, the stated reason.
    ``gen``: generation rows of one run, every state (the reasons live in the non-ok rows)."""
    out: list[str] = []
    if gen.empty or "format" not in gen:
        return out
    ok = gen[gen["state"] == State.OK]
    for gemv, gemm, family in GEMV_PAIRS:
        for model in sorted(ok["model"].dropna().unique()):
            formats = set(ok[ok["model"] == model]["format"])
            if gemm not in formats:
                continue
            if gemv not in formats:
                stated = gen[(gen["model"] == model) & (gen["format"] == gemv) & (gen["state"] != State.OK)]
                if not stated.empty:
                    row = stated.iloc[0]
                    out.append(f"GEMV VS GEMM: {model}: {gemv} could not run "
                               f"({row['state']}: {row.get('reason', '')}); "
                               f"{gemm} ran, so this stack cannot answer which wins at batch 1")
                continue
            for prompt in sorted(ok[ok["model"] == model]["prompt_len"].unique()):
                table = decode_table(ok, model, prompt)
                if gemv not in table.index or gemm not in table.index:
                    continue
                ratio = (table.loc[gemv] / table.loc[gemm]).dropna()
                if ratio.empty:
                    continue
                faster = [str(b) for b in ratio.index if ratio[b] > 1.0]
                out.append(f"GEMV VS GEMM: {model} p{prompt} ({family}): {gemv} decodes at "
                           + ", ".join(f"{ratio[b]:.2f}x at batch {b}" for b in ratio.index)
                           + f" of {gemm}; GEMV faster at batch {', '.join(faster) if faster else 'none measured'}")
    return out


STATED_FLAGS = {state.value: state.flag for state in State if state.flag}


def stated_flags(gen: pd.DataFrame) -> list[str]:
    """Cases that ran and died, or ran past their time budget: beside the naive fallbacks, since a case too slow
    to finish is the seed's silent slow path, and one that crashed measured nothing at all. One line per
    (model, format, runtime, state), with the first case's reason (the others say 'not run: ...')."""
    if "state" not in gen or gen.empty:
        return []
    rows = gen[gen["state"].isin(list(STATED_FLAGS))]
    if rows.empty:
        return []
    rows = rows.assign(runtime=rows.get("runtime", "transformers"), reason=rows.get("reason", ""))
    out = []
    for (model, fmt, runtime, state), group in rows.groupby(["model", "format", "runtime", "state"], dropna=False):
        first = group[~group["reason"].astype(str).str.startswith("not run:")]
        reason = (first if len(first) else group)["reason"].iloc[0]
        out.append(f"{STATED_FLAGS[state]}: {model}: {fmt} on {runtime} ({len(group)} case(s)): {reason}")
    return out


def flags(gen: pd.DataFrame) -> list[str]:
    """The seed's failure modes, found automatically."""
    out = []
    ok = gen[gen["state"] == State.OK] if "state" in gen else gen
    quantized = quantized_formats(ok)
    for (model, prompt), rows in ok.groupby(["model", "prompt_len"]):
        speed = speedup_table(ok, model, prompt, "decode")
        for fmt in speed.index:
            if fmt not in quantized:
                continue
            slower = speed.loc[fmt][speed.loc[fmt] < 1.0].dropna()
            if len(slower):
                worst_batch = slower.idxmin()
                out.append(f"SLOWER THAN BF16: {model} p{prompt}: {fmt} decodes {1 / slower.min():.2f}x slower "
                           f"than {baseline_for(fmt)} at batch {worst_batch} "
                           f"(slower at batch {', '.join(map(str, slower.index))})")
    # A +compile format holds the same weights and kernel as its eager format: flag them once.
    measured = set(zip(ok["model"], ok["format"]))
    once = ok[[not (same_model_as_eager(f) and (m, eager_name(f)) in measured)
               for m, f in zip(ok["model"], ok["format"])]]
    for model, rows in once.groupby("model"):
        by_format = rows.groupby("format")[["weight_bytes_after_load", "weight_bytes_after_first_forward"]].max()
        for fmt, row in by_format.iterrows():
            if fmt not in quantized or baseline_for(fmt) not in by_format.index:
                continue
            dense = by_format.loc[baseline_for(fmt), "weight_bytes_after_first_forward"]
            if row["weight_bytes_after_first_forward"] >= 0.9 * dense:
                held = row["weight_bytes_after_first_forward"] / 2**20
                out.append(f"NO MEMORY SAVING: {model}: {fmt} holds {held:.1f} "
                           f"MiB of weights after the first forward vs {dense / 2**20:.1f} MiB for {baseline_for(fmt)} "
                           f"({row['weight_bytes_after_load'] / 2**20:.1f} MiB right after load)")
    observed = _observed_kernels(once)
    out += _naive_gemm_flags(observed)
    if "kernel" in once:
        for (model, fmt), rows in once.groupby(["model", "format"]):
            kernel = str(rows["kernel"].iloc[0])
            # A kernel picked for the user (AutoAWQ's routing, gptqmodel's auto) that dequantizes the
            # whole weight every call: the slow path nobody asked for. A backend named by the format is not.
            # Read from the fields observed at each case's shape where the run has them, else from the prose.
            mine = observed[(observed["model"] == model) & (observed["format"] == fmt)]
            if len(mine):
                slow = mine[mine["kernel_dequantizes"].eq(True) & (mine["kernel_chosen_by"] == "library")]
                if len(slow) and fmt in quantized:
                    out.append(f"NAIVE FALLBACK: {model}: {fmt} dequantized the weight every call at "
                               f"{_shapes(slow)} ({kernel})")
            elif "naive" in kernel and dispatch.chosen_by(kernel) == "library":
                out.append(f"NAIVE FALLBACK: {model}: {fmt} ran a naive dequantize+matmul path ({kernel})")
            if DISPATCH_MARK in kernel and not same_model_as_eager(fmt):
                out.append(f"LIBRARY DISPATCH: {model}: {fmt} runs behind {kernel.split(DISPATCH_MARK)[1]}: "
                           f"host work on every module call" + _dispatch_cost(once, model, fmt))
    return out + compile_flags(ok)


def _observed_kernels(ok: pd.DataFrame) -> pd.DataFrame:
    """The cases whose kernel was observed at their own shape (bench.kernel_fields), with its fields."""
    if "kernel_naive_gemm" not in ok:
        return pd.DataFrame(columns=["model", "format", "kernel_naive_gemm", "kernel_dequantizes"])
    return ok[ok["kernel_naive_gemm"].notna() | ok["kernel_dequantizes"].notna()]


def _shapes(rows: pd.DataFrame) -> str:
    return "; ".join(sorted(set(rows["kernel_observed_at"].astype(str))))


def _naive_gemm_flags(observed: pd.DataFrame) -> list[str]:
    """oneDNN's reference GEMM at any case's shape, whoever chose the kernel: a named backend (gptq-torch,
    awq-gemm-hf-torch) that lands on ``ref`` is as slow as one the library chose."""
    out = []
    naive = observed[observed["kernel_naive_gemm"].eq(True)]  # a column of True / False / None
    for (model, fmt), rows in naive.groupby(["model", "format"]):
        # the frame keeps scalars; the implementations' list is read from each case's own record
        benches = rows.get("_bench", [])
        impls = sorted({i for bench in benches if isinstance(bench, dict)
                        for i in (bench.get("extra_info") or {}).get("kernel_onednn") or [] if " ref" in i})
        out.append(f"NAIVE FALLBACK: {model}: {fmt} ran oneDNN's reference GEMM ({', '.join(impls)}) at "
                   f"{_shapes(rows)}; kernel chosen by the {rows['kernel_chosen_by'].iloc[0]}")
    return out


def compile_table(ok: pd.DataFrame) -> pd.DataFrame:
    """(model, compiled format) -> what torch.compile made of its decode step and what it gained:
    graphs, graph breaks, the most frequent break reason, compile seconds, and decode tokens/s
    relative to the same format run eager in the same run (min and max over batch and prompt)."""
    columns = ["model", "format", "graphs", "graph_breaks", "break_reason", "break_at", "cudagraph_skips",
               "compile_s", "vs_eager_min", "vs_eager_max"]
    if "compile_graphs" not in ok:
        return pd.DataFrame(columns=columns)
    decode = ok[ok["phase"] == "decode"]
    speed = decode.pivot_table(index=["model", "format"], columns=["prompt_len", "batch"],
                               values="decode_tokens_per_s", aggfunc="median")
    rows = []
    for (model, fmt), cases in decode[decode["compile_graphs"].notna()].groupby(["model", "format"]):
        eager = (model, eager_name(fmt))
        ratio = ((speed.loc[(model, fmt)] / speed.loc[eager]).dropna() if eager in speed.index
                 else pd.Series(dtype=float))
        rows.append({"model": model, "format": fmt, "graphs": int(cases["compile_graphs"].max()),
                     "graph_breaks": int(cases["compile_graph_breaks"].max()),
                     "break_reason": _mode(cases, "compile_break_reason"),
                     "break_at": _mode(cases, "compile_break_at"),
                     "cudagraph_skips": int(cases["cudagraph_skips"].max()) if "cudagraph_skips" in cases else 0,
                     "cudagraph_skip_reason": _mode(cases, "cudagraph_skip_reason"),
                     "compile_s": float(cases["compile_s"].median()),
                     "vs_eager_min": ratio.min() if len(ratio) else None,
                     "vs_eager_max": ratio.max() if len(ratio) else None})
    return pd.DataFrame(rows, columns=columns + ["cudagraph_skip_reason"])


def _mode(rows: pd.DataFrame, column: str):
    values = rows[column].dropna() if column in rows else pd.Series(dtype=object)
    return values.mode().iloc[0] if len(values) else None


def compile_flags(ok: pd.DataFrame) -> list[str]:
    """A compiled decode that broke into several graphs, or ran slower than eager: the compiled path's
    silent slow fallbacks."""
    out = []
    for row in compile_table(ok).itertuples():
        span = (f"{row.vs_eager_min:.2f}" if f"{row.vs_eager_min:.2f}" == f"{row.vs_eager_max:.2f}"
                else f"{row.vs_eager_min:.2f}-{row.vs_eager_max:.2f}") if not pd.isna(row.vs_eager_min) else ""
        gain = f"; decode {span}x of {eager_name(row.format)} eager" if span else ""
        if row.graph_breaks > 0:
            where = f", at {row.break_at}" if isinstance(row.break_at, str) else ""
            out.append(f"GRAPH BREAKS: {row.model}: {row.format} compiled its decode step into {row.graphs} graphs "
                       f"at {row.graph_breaks} graph breaks (most often: {row.break_reason}{where}){gain}")
        elif not pd.isna(row.vs_eager_max) and row.vs_eager_max < 1.0:
            out.append(f"COMPILE SLOWER: {row.model}: {row.format} compiled into one graph yet{gain}")
        if row.cudagraph_skips > 0:  # compiled, but the host still launches every kernel
            reason = f" ({row.cudagraph_skip_reason})" if isinstance(row.cudagraph_skip_reason, str) else ""
            out.append(f"CUDA GRAPHS SKIPPED: {row.model}: {row.format}: inductor skipped CUDA graphs for "
                       f"{row.cudagraph_skips} graph(s){reason}{gain}")
    return out


def _dispatch_cost(ok: pd.DataFrame, model: str, fmt: str) -> str:
    """'; without it (<variant>, same dense weights) decode ran a-bx as fast (batch ...)' for each
    variant that was measured beside ``fmt``."""
    decode = ok[(ok["model"] == model) & (ok["phase"] == "decode")]
    table = decode.pivot_table(index="format", columns=["prompt_len", "batch"], values="decode_tokens_per_s",
                               aggfunc="median")
    if fmt not in table.index:
        return ""
    out = ""
    for variant, label in WITHOUT_DISPATCH.get(fmt, ()):
        ratios = (table.loc[variant] / table.loc[fmt]).dropna() if variant in table.index else pd.Series(dtype=float)
        if ratios.empty:
            continue
        batches = sorted({batch for _, batch in ratios.index})
        out += (f"; {label} ({variant}, same dense weights) decode ran {ratios.min():.2f}-{ratios.max():.2f}x "
                f"as fast (batch {', '.join(map(str, batches))})")
    return out


# ----------------------------------------------------------------------------- runtimes side by side
def runtime_table(ok: pd.DataFrame, model: str, prompt_len: int, phase: str = "decode") -> pd.DataFrame:
    """(format, batch) x runtime -> tokens/s: the same checkpoint on each runtime measured."""
    rows = ok[(ok["model"] == model) & (ok["prompt_len"] == prompt_len) & (ok["phase"] == phase)]
    if rows.empty or "base_format" not in rows:
        return pd.DataFrame()
    return rows.pivot_table(index=["base_format", "batch"], columns="runtime", values=f"{phase}_tokens_per_s",
                            aggfunc="median")


def runtime_speedups(table: pd.DataFrame) -> pd.DataFrame:
    """runtime_table -> each format over bf16 on the same runtime and batch."""
    if table.empty or BASELINE not in table.index.get_level_values(0):
        return pd.DataFrame()
    base = table.xs(BASELINE, level=0)
    return pd.concat({fmt: table.xs(fmt, level=0) / base for fmt in table.index.get_level_values(0).unique()},
                     names=["base_format", "batch"])


def runtime_ratios(table: pd.DataFrame) -> pd.DataFrame:
    """runtime_table -> each other runtime's tokens/s over transformers' (same format, batch)."""
    if DEFAULT_RUNTIME not in table.columns:
        return pd.DataFrame(index=table.index)
    others = [c for c in table.columns if c != DEFAULT_RUNTIME and " " not in str(c)]
    return pd.DataFrame({f"{c} /transformers": table[c] / table[DEFAULT_RUNTIME] for c in others}, index=table.index)


def runtime_flips(ok: pd.DataFrame, quantized: set[str]) -> list[str]:
    """Where the runtime changes the answer: a quantized format slower than bf16 on one runtime and faster on
    another, at the same model, prompt and batch."""
    out = []
    base_quantized = {eager_name(f) for f in quantized}
    for (model, prompt), _ in ok.groupby(["model", "prompt_len"]):
        speed = runtime_speedups(runtime_table(ok, model, prompt))
        for (fmt, batch), ratios in speed.iterrows():
            ratios = ratios.dropna()
            if fmt not in base_quantized or ratios.empty or ratios.min() >= 1.0 or ratios.max() <= 1.0:
                continue
            words = ", ".join(f"{ratio:.2f}x in {runtime}" for runtime, ratio in ratios.sort_values().items())
            out.append(f"RUNTIME CHANGES THE ANSWER: {model} p{prompt} batch {batch}: {fmt} decodes at {words} "
                       f"of bf16 on the same runtime")
    return out
