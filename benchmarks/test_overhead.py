"""The harness's own overhead: one decode case through the suite vs a bare loop, same process."""

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
