"""Prefill and decode throughput, parametrized over model x format x batch x prompt x phase.

The matrix comes from the command line (see ``pytest --help``, group "quantbench"):
``--qb-models``, ``--model-dir``, ``--qb-formats``, ``--qb-batch``, ``--qb-prompt``.
"""

from quantbench.bench.runner import run_case


def test_generation(benchmark, request, qb_case, qb_pool, qb_options, qb_states):
    benchmark.group = f"{qb_case.source.label} {qb_case.phase} b{qb_case.batch} p{qb_case.prompt_len}"
    run_case(benchmark, qb_case, qb_pool, qb_options, qb_states, nodeid=request.node.nodeid)
