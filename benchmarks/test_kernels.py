"""GEMM/GEMV kernels of every format over the specs' real (K, N) shapes and a sweep of M.

Options (pytest --help, group "quantbench"): --qb-kernel-models, --qb-kernels, --qb-m.
"""

from quantbench.bench.kernel_runner import run_kernel_case


def test_kernel(benchmark, request, qb_kernel_case, qb_device, qb_kernel_cache, qb_peaks, qb_options, qb_states):
    case = qb_kernel_case
    benchmark.group = f"{case.model} {case.shape} K{case.k} N{case.n} M{case.m}"
    run_kernel_case(benchmark, case, qb_device, qb_kernel_cache, qb_peaks, qb_options.kernel_rounds, qb_states,
                    nodeid=request.node.nodeid)
