"""How long a run will take before it runs (``pytest --qb-plan cuda``): each collected case's predicted seconds from
a cost model of the device, so a GPU stage can be sized to the slot a runner gives (10-minute commands) on a
machine without the GPU. Pure: cases and costs in, rows out.

The GPU figures are the committed H100 run's (reports/raw/h100-2026-11-23, Qwen2.5-3B, torch 2.11, transformers
5.17), rounded up: an eager transformers decode step 14-28 ms (bf16 at batch 1: 1.74 s per 128 tokens; ct-w4a16
3.6 s), a prefill round 27-71 ms at 128-token prompts, a checkpoint's load 1-2 s plus the guard's forwards, a
kernel-suite case's rounds 1-3 ms each. What that run did not measure (vLLM's engine and server starts, a compile)
is vLLM's and torch's own order of magnitude on an H100, stated as such below.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Costs:
    decode_step_s: float        # one decode step of an eager transformers runtime
    compiled_step_s: float      # one decode step of a compiled runtime (CUDA graphs) or vLLM's engine
    prefill_tokens_per_s: float
    prefill_floor_s: float      # a prefill round at a small prompt: the launches, not the tokens
    load_s: float               # a checkpoint's load, its guard forwards and first-forward facts
    compile_s: float            # torch.compile of one new shape (mode reduce-overhead)
    engine_start_s: dict        # vLLM's in-process engine: {"vllm": compiled with CUDA graphs, "vllm+eager": eager}
    server_start_s: float       # vLLM's OpenAI server, compiled engine, to /health
    kernel_case_s: float        # a kernel-suite case: its rounds and warm-up at one M
    kernel_prepare_s: float     # a kernel's weights packed at one (K, N)


GPU = Costs(decode_step_s=0.028, compiled_step_s=0.010, prefill_tokens_per_s=60_000.0, prefill_floor_s=0.07,
            load_s=12.0, compile_s=60.0, engine_start_s={"vllm": 150.0, "vllm+eager": 45.0}, server_start_s=150.0,
            kernel_case_s=0.2, kernel_prepare_s=1.5)
COSTS = {"cuda": GPU}
SLOT_S = 540.0  # a stage of tools/reference_run.sh: a 10-minute command less installs, the history copy, a margin


@dataclass(frozen=True)
class Planned:
    case: str
    seconds: float
    why: str


def generation_seconds(case, costs: Costs, rounds: int, warmup: int) -> Planned:
    kept = rounds + warmup
    if case.phase == "decode":
        step = costs.compiled_step_s if ("compile" in (case.runtime or "") or (case.runtime or "").startswith("vllm")) \
            else costs.decode_step_s
        seconds = kept * case.new_tokens * step
        why = f"{kept} rounds x {case.new_tokens} steps x {step * 1000:.0f} ms"
    else:
        per_round = max(costs.prefill_floor_s, case.batch * case.prompt_len / costs.prefill_tokens_per_s)
        seconds = kept * per_round
        why = f"{kept} rounds x {per_round:.2f} s"
    return Planned(case.id, seconds, why)


def serving_seconds(case, costs: Costs, rounds: int, warmup: int) -> Planned:
    waves = -(-case.num_prompts // (case.concurrency or case.num_prompts))
    per_round = waves * case.output_len * costs.compiled_step_s * (1 + (case.concurrency or 64) / 128)
    return Planned(case.id, (rounds + warmup) * per_round,
                   f"{rounds + warmup} rounds x {waves} waves x {case.output_len} tokens")


def plan(generation: Iterable, serving: Iterable, kernels: Iterable, costs: Costs, rounds: int, warmup: int,
         serve_rounds: int, serve_warmup: int) -> list[Planned]:
    """Every case's predicted seconds, with the one-off costs (a checkpoint's load or engine start, a server's
    start, a compile per shape, a kernel's packing per shape) on the first case that pays them."""
    rows, loaded, shapes = [], set(), set()
    for case in generation:
        row = generation_seconds(case, costs, rounds, warmup)
        key = (case.source.label, case.format, case.runtime)
        if key not in loaded:
            loaded.add(key)
            start = costs.engine_start_s.get(case.runtime, costs.load_s)
            row = Planned(row.case, row.seconds + start, f"{row.why} + {start:.0f} s load/start")
        if "compile" in (case.runtime or "") and (key, case.batch, case.prompt_len) not in shapes:
            shapes.add((key, case.batch, case.prompt_len))
            row = Planned(row.case, row.seconds + costs.compile_s, f"{row.why} + {costs.compile_s:.0f} s compile")
        rows.append(row)
    for case in serving:
        row = serving_seconds(case, costs, serve_rounds, serve_warmup)
        key = (case.source.label, case.format)
        if key not in loaded:
            loaded.add(key)
            row = Planned(row.case, row.seconds + costs.server_start_s,
                          f"{row.why} + {costs.server_start_s:.0f} s server start")
        rows.append(row)
    for case in kernels:
        seconds, why = costs.kernel_case_s, "rounds at one M"
        if (case.kernel, case.model, case.k, case.n) not in shapes:
            shapes.add((case.kernel, case.model, case.k, case.n))
            seconds, why = seconds + costs.kernel_prepare_s, f"{why} + {costs.kernel_prepare_s:.1f} s packing"
        rows.append(Planned(case.id, seconds, why))
    return rows


def summary(rows: list[Planned], slot_s: float = SLOT_S) -> str:
    total = sum(r.seconds for r in rows)
    verdict = "fits" if total <= slot_s else "OVER: split it (fewer formats, batches or rounds)"
    return f"{len(rows)} cases, predicted {total:.0f} s against a {slot_s:.0f} s slot: {verdict}"
