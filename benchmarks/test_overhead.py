"""The harness's own overhead: one decode case through the suite vs a bare loop, same process."""

import dataclasses
import os
import statistics
import time

import pytest

from quantbench.bench.cases import Case
from quantbench.bench.pool import ModelSource
from quantbench.bench.prompts import prompt_ids
from quantbench.bench.runner import run_case
from quantbench.measure import synchronize
from quantbench.runtimes import eager


def _bare_loop(model, ids, new_tokens, device, rounds):
    times = []
    for _ in range(rounds):
        cache, token = eager.prefill(model, ids)
        synchronize(device)
        start = time.perf_counter()
        eager.decode_n_tokens(model, cache, token, new_tokens)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


@pytest.mark.parametrize("fmt", ["bf16"])
def test_harness_overhead(benchmark, request, fmt, qb_pool, qb_options, qb_states):
    source = ModelSource.from_spec("tiny")
    case = Case(source, fmt, "transformers", batch=1, prompt_len=32, new_tokens=16, phase="decode")
    model = qb_pool.get(source, fmt).loaded.model
    device, rounds = qb_options.device, max(qb_options.rounds, 10)
    ids = prompt_ids(case.batch, case.prompt_len, source.vocab_size(), device)
    # The bare loop runs half its rounds before and half after the suite's measurement, so drift hits
    # both sides; and as many rounds in all as the suite, because a minimum over more samples is lower.
    bare = _bare_loop(model, ids, case.new_tokens, device, rounds // 2)
    run_case(benchmark, case, qb_pool, qb_options, qb_states, nodeid=request.node.nodeid)
    bare += _bare_loop(model, ids, case.new_tokens, device, rounds - rounds // 2)
    stats = benchmark.stats.stats
    # Machine noise only ever adds time, so the ratio of minimums isolates what the harness adds;
    # the ratio of medians is kept beside it.
    ratio_min = stats.min / min(bare)
    ratio_median = stats.median / statistics.median(bare)
    benchmark.extra_info.update(bare_loop_median_s=statistics.median(bare), bare_loop_min_s=min(bare),
                                harness_overhead_ratio=ratio_min, harness_overhead_ratio_median=ratio_median)
    print(f"\nharness overhead: suite min {stats.min * 1e3:.3f} ms / bare loop min {min(bare) * 1e3:.3f} ms "
          f"= {ratio_min:.4f}; medians {stats.median * 1e3:.3f} / {statistics.median(bare) * 1e3:.3f} ms "
          f"= {ratio_median:.4f}")


@pytest.mark.parametrize("runtime", [os.environ.get("QUANTBENCH_OVERHEAD_VLLM", "vllm+eager")])
def test_vllm_harness_overhead(benchmark, request, runtime, qb_pool, qb_options, qb_states):
    """The suite's vLLM decode case (wall clock around the engine's steps after prefill, in this process,
    around the pipe to the engine's child process) vs a bare ``llm.generate`` loop where the engine lives
    (vLLM's own decode time of each generate)."""
    pytest.importorskip("vllm", reason="vLLM is not installed (the vllm stack has it)")
    source = ModelSource.from_spec("tiny")
    # The engine is sized to the run's matrix (pool.shapes): the case fits inside it.
    case = Case(source, "bf16", runtime, batch=1, prompt_len=min(32, qb_pool.shapes.max_prompt),
                new_tokens=qb_pool.shapes.new_tokens, phase="decode")
    from quantbench.runtimes.vllm_engine import bare_generate
    decoder = qb_pool.get(source, "bf16", runtime).decoder  # the engine's, in its child process or here
    rounds = max(qb_options.rounds, 30)
    options = dataclasses.replace(qb_options, rounds=rounds)
    ids = prompt_ids(case.batch, case.prompt_len, source.vocab_size(), qb_options.device)
    decoder.call(bare_generate, ids, case.new_tokens, 2)  # warm-up at the exact shape
    bare = decoder.call(bare_generate, ids, case.new_tokens, rounds // 2)
    info = run_case(benchmark, case, qb_pool, options, qb_states, nodeid=request.node.nodeid)
    bare += decoder.call(bare_generate, ids, case.new_tokens, rounds - rounds // 2)
    stats = benchmark.stats.stats
    ratio_min, ratio_median = stats.min / min(bare), stats.median / statistics.median(bare)
    benchmark.extra_info.update(bare_loop_median_s=statistics.median(bare), bare_loop_min_s=min(bare),
                                harness_overhead_ratio=ratio_min, harness_overhead_ratio_median=ratio_median)
    # Same rounds, no drift between the two: the round where the engine runs over vLLM's own first-to-last token
    # time, and the wall this process saw around it (the pipe to an isolated engine included) over the same.
    engine_s = info.get("engine_decode_s")
    benchmark.extra_info["harness_wall_vs_engine"] = info.get("wall_vs_engine_decode")
    benchmark.extra_info["harness_parent_wall_vs_engine"] = (info["wall_round_s"] / engine_s
                                                             if info.get("wall_round_s") and engine_s else
                                                             info.get("wall_vs_engine_decode"))
    print(f"\nvLLM harness overhead ({runtime}): same rounds, wall / engine {info.get('wall_vs_engine_decode'):.4f}; "
          f"suite min {stats.min * 1e3:.3f} ms / bare generate min "
          f"{min(bare) * 1e3:.3f} ms = {ratio_min:.4f}; medians {stats.median * 1e3:.3f} / "
          f"{statistics.median(bare) * 1e3:.3f} ms = {ratio_median:.4f}")
