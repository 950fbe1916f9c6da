"""Serving under load: each checkpoint behind vLLM's OpenAI-compatible server, driven by vLLM's own
benchmark client at a sweep of concurrencies (and Poisson request rates).

The matrix: ``--qb-formats`` entries on the ``vllm-serve`` runtime (``bf16@vllm-serve`` or
``--qb-runtimes vllm-serve``), times the load points (``--qb-serve-concurrency``, ``--qb-serve-rate``); see
``pytest --help``, group "quantbench", for the lengths, requests per round and the server's size.
"""

from quantbench.bench.serving import run_serving_case


def test_serving(benchmark, request, qb_serving_case, qb_servers, qb_states):
    case = qb_serving_case
    benchmark.group = f"{case.source.label} serving {case.load} in{case.input_len} out{case.output_len}"
    run_serving_case(benchmark, case, qb_servers, qb_states, nodeid=request.node.nodeid)
