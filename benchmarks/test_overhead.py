"""The harness's own overhead: one decode case through the suite vs a bare loop, same process."""

import statistics
import time

import pytest

from quantbench import workloads
from quantbench.cases import Case
from quantbench.measure import synchronize
from quantbench.pool import ModelSource
from quantbench.runner import run_case


@pytest.mark.parametrize("fmt", ["bf16"])
def test_harness_overhead(benchmark, request, fmt, qb_pool, qb_options, qb_states):
    source = ModelSource.from_spec("tiny")
    case = Case(source, fmt, batch=1, prompt_len=32, new_tokens=16, phase="decode")
    run_case(benchmark, case, qb_pool, qb_options, qb_states, nodeid=request.node.nodeid)
    suite_median = benchmark.stats.stats.median

    model, device = qb_pool.current.loaded.model, qb_options.device
    ids = workloads.prompt_ids(case.batch, case.prompt_len, source.vocab_size(), device)
    bare = []
    for _ in range(max(qb_options.rounds, 10)):
        cache, token = workloads.prefill(model, ids)
        synchronize(device)
        start = time.perf_counter()
        workloads.decode_n_tokens(model, cache, token, case.new_tokens)
        synchronize(device)
        bare.append(time.perf_counter() - start)
    ratio = suite_median / statistics.median(bare)
    benchmark.extra_info["bare_loop_median_s"] = statistics.median(bare)
    benchmark.extra_info["harness_overhead_ratio"] = ratio
    print(f"\nharness overhead: suite median {suite_median * 1e3:.3f} ms / bare loop median "
          f"{statistics.median(bare) * 1e3:.3f} ms = {ratio:.4f}")
