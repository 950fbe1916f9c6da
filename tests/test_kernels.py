"""Kernel suite: the bytes-moved model by hand, weights as allocated, correctness, crossover."""

import json

import pandas as pd
import pytest
import torch

from quantbench import kernels
from quantbench.analysis import crossover

from .conftest import run_pytest

# K = N = 256, M = 1, group 128, worked by hand:
#   activations: x 2*1*256 = 512, y 2*1*256 = 512
#   dense: W 2*256*256 = 131072                                          -> 132096
#   awq-gemm: qweight 256*256/2 = 32768, qzeros (256/128)*(256/8)*4 = 256,
#             scales (256/128)*256*2 = 1024 -> 34048                      -> 35072
#   awq-gemm-naive: + dequantized fp16 W written and read 2*131072        -> 297216
#   awq-gemv: qweight 32768, zeros width ceil(2/8) = 1 word: scales 256*8*2 = 4096,
#             qzeros 256*1*4 = 1024 -> 37888                              -> 38912
#   ct-w4a16: weight_packed 32768 + weight_scale 2*256*2 = 1024 + 262144  -> 296960
#   fp8: W 65536 + scale 4, x read 512 + fp8 x 256 + scale 4, y 512        -> 66824
HAND = {"torch-fp16": 132096, "torch-bf16": 132096, "awq-gemm-awq_ext": 35072, "awq-gemm-triton": 35072,
        "awq-gemm-naive": 297216, "awq-gemv": 38912, "ct-w4a16": 296960, "fp8-scaled-mm": 66824}


@pytest.mark.parametrize("name", list(HAND))
def test_bytes_moved_by_hand(name):
    assert kernels.bytes_moved(name, 1, 256, 256) == HAND[name]


def test_flops():
    assert kernels.flops(4, 256, 512) == 2 * 4 * 256 * 512


@pytest.mark.parametrize("name", ["torch-fp16", "torch-bf16", "awq-gemm-naive", "ct-w4a16"])
def test_weight_model_matches_allocated_buffers(name):
    prepared = kernels.KERNELS[name].prepare(768, 256, torch.device("cpu"), copies=2)
    assert prepared.weight_bytes == kernels.weight_bytes(name, 768, 256)
    assert len(prepared.copies) == 2


def test_awq_gemv_weight_model_matches_autoawq_buffers():
    from awq.modules.linear import WQLinear_GEMV
    module = WQLinear_GEMV(4, 128, 5632, 2048, False, "cpu")
    allocated = sum(b.numel() * b.element_size() for b in module.buffers())
    assert allocated == kernels.weight_bytes("awq-gemv", 5632, 2048)


@pytest.mark.parametrize("name", ["torch-fp16", "torch-bf16", "awq-gemm-naive", "ct-w4a16"])
def test_cpu_kernels_match_fp32_reference_on_fresh_inputs(name):
    kernel = kernels.KERNELS[name]
    prepared = kernel.prepare(512, 256, torch.device("cpu"), copies=2, seed=3)
    x = torch.randn(8, 512).to(kernel.dtype)
    assert x.abs().min() > 0 or x.abs().max() > 0  # not zeros
    err = kernels.rel_err(prepared.call(x, prepared.copies[1]), x.float() @ prepared.reference_weight.t())
    assert err <= kernels.tolerance(kernel), err


def test_gpu_only_kernels_state_why_on_cpu():
    cpu = torch.device("cpu")
    for name in ("awq-gemm-awq_ext", "awq-gemm-triton", "awq-gemv", "fp8-scaled-mm"):
        assert kernels.KERNELS[name].unsupported_reason(cpu)


def test_crossover():
    rows = []
    for m, dense, int4 in [(1, 10, 4), (16, 10, 6), (256, 10, 9), (1024, 10, 12), (4096, 10, 15)]:
        rows += [{"model": "x", "shape": "down", "K": 4096, "N": 4096, "M": m, "kernel": "torch-fp16", "time_s": dense},
                 {"model": "x", "shape": "down", "K": 4096, "N": 4096, "M": m, "kernel": "awq-gemv", "time_s": int4}]
    table = crossover(pd.DataFrame(rows))
    row = table.iloc[0]
    assert row["crossover_M"] == 1024 and row["best_M"] == 1 and row["best_speedup"] == pytest.approx(2.5)


@pytest.mark.stack_independent
def test_kernel_suite_on_cpu(tmp_path):
    out = tmp_path / "kernels.json"
    result = run_pytest("benchmarks/test_kernels.py", f"--benchmark-json={out}", "-q")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "crossover M (int4 kernel stops beating torch-fp16)" in result.stdout
    data = json.loads(out.read_text())
    assert data["quantbench"]["peaks"]["memory_gbps"] > 0 and data["quantbench"]["crossover"]
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        assert info["time_per_call_s"] > 0 and info["tflops"] > 0 and info["gbps"] > 0
        assert info["pct_peak_gbps"] > 0 and info["pct_peak_tflops"] > 0
        assert info["rel_err_vs_fp32"] <= info["rel_err_bound"]
    shapes = {(b["extra_info"]["K"], b["extra_info"]["N"]) for b in data["benchmarks"]}
    assert (5632, 2048) in shapes and (2048, 256) in shapes  # TinyLlama down and k/v projections
    states = data["quantbench"]["states"]
    assert {s["kernel"] for s in states} == {"awq-gemm-awq_ext", "awq-gemm-triton", "awq-gemv", "fp8-scaled-mm"}
