"""The serving suite's tables and findings (pure functions on the history frame; no plotting, no I/O).

Rows are load points (suite "serving"): one format behind vLLM's server at one concurrency or request rate,
every figure vLLM's client's. The questions: which format serves the most requests per second within the
SLO (goodput), up to which concurrency it stays within it (the knee), and what that costs in latency.
"""

from __future__ import annotations

import pandas as pd

from .findings import BASELINE

SUITE = "serving"
TABLE_COLUMNS = {"output_throughput": "output tok/s", "request_throughput": "req/s", "request_goodput": "goodput req/s",
                 "median_ttft_ms": "TTFT p50 ms", "p99_ttft_ms": "TTFT p99 ms", "median_tpot_ms": "TPOT p50 ms",
                 "p99_tpot_ms": "TPOT p99 ms", "median_e2el_ms": "E2EL p50 ms", "slo_met": "within SLO"}


def serving_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The serving suite's rows of a run frame (measured and stated), the format without its runtime."""
    if frame.empty or "suite" not in frame:
        return frame[:0]
    rows = frame[frame["suite"] == SUITE].copy()
    if "base_format" in rows:
        rows["format"] = rows["base_format"]
    return rows


def load_label(row) -> str:
    concurrency, rate = row.get("concurrency"), row.get("request_rate")
    if pd.notna(concurrency):
        return f"c{int(concurrency)}"
    return f"r{rate:g}/s" if pd.notna(rate) else "?"


def point_table(ok: pd.DataFrame, model) -> pd.DataFrame:
    """format x load point -> the client's figures (median over rounds), concurrency points in order."""
    rows = ok[ok["model"] == model].copy()
    if rows.empty:
        return pd.DataFrame()
    rows["load"] = [load_label(r) for _, r in rows.iterrows()]
    rows["_order"] = rows["concurrency"].fillna(1e9) + rows["request_rate"].fillna(0) / 1e6
    rows = rows.sort_values(["display_order", "_order"])
    columns = ["load", *(c for c in TABLE_COLUMNS if c in rows)]
    return rows.set_index("format")[columns].rename(columns=TABLE_COLUMNS)


# A 99th percentile means one: below this many requests it is one of the slowest few (at 16, numpy's p99 lies
# 85% of the way from the second slowest to the slowest).
MEANINGFUL_P99_REQUESTS = 100


def percentile_words(ok: pd.DataFrame) -> list[str]:
    """What a p99 in these tables is over, said where it is near the maximum rather than a 99th percentile."""
    if ok.empty or "num_prompts" not in ok:
        return []
    counts = ok["num_prompts"].dropna()
    if counts.empty or counts.min() >= MEANINGFUL_P99_REQUESTS:
        return []
    span = f"{int(counts.min())}" if counts.min() == counts.max() else f"{int(counts.min())}-{int(counts.max())}"
    return [f"Each p99 is over one round's {span} requests: fewer than {MEANINGFUL_P99_REQUESTS}, so it is close to "
            "their maximum, the slowest request's latency rather than a 99th percentile (more prompts a round: "
            "--qb-serve-prompts)."]


def slo_knee(points: list[tuple]) -> int | str:
    """(concurrency, met the SLO) in increasing concurrency -> the last concurrency before the first miss ("none"
    when the first point misses; a None, no SLO, is no pass)."""
    knee: int | str = "none"
    for concurrency, met in points:
        if met is not True:
            break
        knee = int(concurrency)
    return knee


def knees(ok: pd.DataFrame, model) -> pd.DataFrame:
    """Per format: the knee, the last concurrency before the first that misses the SLO on its p99 TTFT and TPOT
    ("none": not even the lowest measured; a higher point that met it again after a miss is the noise of that
    point, not the format's capacity), and the best goodput over its load points (requests/s meeting every SLO)."""
    rows = ok[(ok["model"] == model)]
    out = []
    for fmt, group in rows.groupby("format", sort=False):
        by_c = group[group["concurrency"].notna()].sort_values("concurrency")
        knee = slo_knee(list(zip(by_c["concurrency"], by_c["slo_met"])))
        best = group["request_goodput"].max() if "request_goodput" in group else None
        top = group.loc[group["request_goodput"].idxmax()] if best is not None and pd.notna(best) else None
        out.append({"format": fmt, "display_order": group["display_order"].min(),
                    "SLO knee (max concurrency)": knee,
                    "concurrencies measured": ",".join(str(int(c)) for c in by_c["concurrency"]),
                    "best goodput req/s": best, "at": load_label(top) if top is not None else None,
                    "output tok/s there": top["output_throughput"] if top is not None else None})
    if not out:
        return pd.DataFrame()
    table = pd.DataFrame(out).sort_values("display_order").drop(columns="display_order")
    return table.set_index("format")


def serving_findings(ok: pd.DataFrame, model, slo: dict | None) -> list[str]:
    """A line per quantized format whose best goodput within the SLO differs from bf16's by 10% or more, or
    whose knee is lower or higher: the serving answer to "is it faster than bf16?"."""
    table = knees(ok, model)
    if table.empty or BASELINE not in table.index:
        return []
    base = table.loc[BASELINE]
    slo_words = " and ".join(f"{k.removesuffix('_ms').upper()} <= {v:g} ms" for k, v in (slo or {}).items()) or "no SLO"
    lines = []
    for fmt, row in table.drop(index=BASELINE).iterrows():
        words = []
        if pd.notna(row["best goodput req/s"]) and pd.notna(base["best goodput req/s"]) and base["best goodput req/s"]:
            got, had = row["best goodput req/s"], base["best goodput req/s"]
            ratio = got / had
            if abs(ratio - 1) >= 0.10:
                words.append(f"serves {'MORE' if ratio > 1 else 'FEWER'} requests within the SLO than bf16: "
                             f"{got:.1f} vs {had:.1f} req/s ({ratio:.2f}x)")
        if row["SLO knee (max concurrency)"] != base["SLO knee (max concurrency)"]:
            words.append(f"SLO knee at concurrency {_knee_words(row['SLO knee (max concurrency)'])} "
                         f"(bf16: {_knee_words(base['SLO knee (max concurrency)'])})")
        if words:
            lines.append(f"{model}, {fmt} behind vLLM's server ({slo_words}): " + "; ".join(words))
    return lines


COALESCED = 1.5  # tokens per streamed chunk past which TPOT and ITL time chunks, not tokens
AT_ONCE = 0.10   # share of requests streamed in one burst past which a load point's latencies time a stall


def stalled_streams(ok: pd.DataFrame, model) -> list[str]:
    """A line per load point whose streams did not arrive token by token: several tokens per chunk, or requests
    whose tokens all came at the end (a frontend starved of CPU). Its TTFT, TPOT and ITL then time that, not
    the model, so the point is flagged rather than compared."""
    rows = ok[(ok["model"] == model)]
    lines = []
    for _, row in rows.iterrows():
        where = f"{model}, {row['format']} at {load_label(row)}"
        if pd.notna(row.get("tokens_per_chunk")) and row["tokens_per_chunk"] >= COALESCED:
            lines.append(f"STREAM COALESCED: {where}: {row['tokens_per_chunk']:.1f} tokens per streamed chunk, so "
                         "its TPOT and ITL time chunks, not tokens")
        if pd.notna(row.get("streamed_at_once")) and row["streamed_at_once"] >= AT_ONCE:
            lines.append(f"STREAM STALLED: {where}: {row['streamed_at_once']:.0%} of requests got every token at "
                         "once at their end, so its TTFT and TPOT time a stall (a frontend starved of CPU), "
                         "not the model")
    return lines


def _knee_words(knee) -> str:
    return "none (not within it at the lowest load)" if knee == "none" else str(int(knee))


SERVER_COLUMNS = {"start_s": ("server_start_s", "median"), "rss_MiB": ("server_rss_bytes", "max"),
                  "kv_cache_MiB": ("kv_cache_memory_bytes", "max"), "kv_cache_tokens": ("kv_cache_tokens", "max"),
                  "engine": ("vllm_compilation", "first"), "kernel": ("kernel", "first")}


def server_table(ok: pd.DataFrame, model) -> pd.DataFrame:
    """Per format: the server's start, memory, KV cache and the kernels its log names (what the run recorded)."""
    rows = ok[ok["model"] == model]
    spec = {name: how for name, how in SERVER_COLUMNS.items() if how[0] in rows}
    if rows.empty or not spec:
        return pd.DataFrame()
    table = rows.groupby("format", sort=False).agg(order=("display_order", "min"), **spec)
    for column in ("rss_MiB", "kv_cache_MiB"):
        if column in table:
            table[column] = table[column] / 2**20
    return table.sort_values("order").drop(columns="order")
