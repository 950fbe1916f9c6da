"""Kernel suite: the bytes-moved model by hand, weights as allocated, correctness, crossover."""

import json

import pandas as pd
import pytest
import torch

from quantbench import kernels
from quantbench.kernels import KERNELS
from quantbench.report.crossover import crossover

from .conftest import gptqmodel_stack, needs_gptqmodel, run_pytest

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
#   awq-hf-* (gptqmodel): the AWQ checkpoint's bytes, as awq-gemm / awq-gemv; awq-hf-torch dequantizes
#             every call, as awq-gemm-naive
#   gptq-*: awq-gemm's 34048 + g_idx 4*256 = 1024 -> 35072                  -> 36096; gptq-torch + 262144 -> 298240
#   bnb-nf4: packed 256*256/2 = 32768 + fp32 absmax 4*256*256/64 = 4096      -> 37888
#   bnb-int8: W 65536 + fp32 row scales 4*256 = 1024, x as int8 256 + its scale 4 -> 67844
#   torchao-int8da8w: W 65536 + fp32 scales 4*256 + zero points 256, x 256 + 4 -> 68100
#   torchao-int4wo: packed 32768 + bf16 scale and zero (256/128)*256*4 = 2048 -> 35840
HAND = {"torch-fp16": 132096, "torch-bf16": 132096, "awq-gemm-awq_ext": 35072, "awq-gemm-triton": 35072,
        "awq-gemm-naive": 297216, "awq-gemv": 38912, "ct-w4a16": 296960, "fp8-scaled-mm": 66824,
        "awq-hf-aten": 35072, "awq-hf-marlin": 35072, "awq-hf-machete": 35072, "awq-hf-gemm": 35072,
        "awq-hf-triton": 35072, "awq-hf-gemv": 38912, "awq-hf-torch": 297216,
        **{f"gptq-{b}": 36096 for b in ("aten", "torch-fused", "triton", "marlin", "exllamav2", "machete")},
        "gptq-torch": 298240, "bnb-nf4": 37888, "bnb-int8": 67844, "torchao-int8da8w": 68100,
        "torchao-int4wo": 35840}


@pytest.mark.parametrize("name", list(HAND))
def test_bytes_moved_by_hand(name):
    assert kernels.bytes_moved(name, 1, 256, 256) == HAND[name]


def test_flops():
    assert kernels.flops(4, 256, 512) == 2 * 4 * 256 * 512


@pytest.mark.parametrize("name", ["torch-fp16", "torch-bf16", "awq-gemm-naive", "ct-w4a16", "bnb-nf4", "bnb-int8",
                                  "torchao-int8da8w", "torchao-int4wo"])
def test_weight_model_matches_allocated_buffers(name):
    if kernels.KERNELS[name].unsupported_reason(torch.device("cpu")):
        pytest.skip(kernels.KERNELS[name].unsupported_reason(torch.device("cpu")))
    prepared = kernels.KERNELS[name].prepare(768, 256, torch.device("cpu"), copies=2)
    assert prepared.weight_bytes == kernels.weight_bytes(name, 768, 256)
    assert len(prepared.copies) == 2


def test_awq_gemv_weight_model_matches_autoawq_buffers():
    from awq.modules.linear import WQLinear_GEMV
    module = WQLinear_GEMV(4, 128, 5632, 2048, False, "cpu")
    allocated = sum(b.numel() * b.element_size() for b in module.buffers())
    assert allocated == kernels.weight_bytes("awq-gemv", 5632, 2048)


@pytest.mark.parametrize("name", ["torch-fp16", "torch-bf16", "awq-gemm-naive", "ct-w4a16", "gptq-aten", "gptq-torch",
                                  "gptq-torch-fused", "bnb-nf4", "bnb-int8", "torchao-int8da8w", "torchao-int4wo"])
def test_cpu_kernels_match_fp32_reference_on_fresh_inputs(name):
    kernel = kernels.KERNELS[name]
    if kernel.unsupported_reason(torch.device("cpu")):  # the library is not in this stack
        pytest.skip(kernel.unsupported_reason(torch.device("cpu")))
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
        rows += [{"model": "x", "shape": "down", "K": 4096, "N": 4096, "M": m, "kernel": "torch-fp16", "time_s": dense,
                  "bits": None},
                 {"model": "x", "shape": "down", "K": 4096, "N": 4096, "M": m, "kernel": "awq-gemv", "time_s": int4,
                  "bits": 4}]
    table = crossover(pd.DataFrame(rows))
    row = table.iloc[0]
    assert row["crossover_M"] == 1024 and row["best_M"] == 1 and row["best_speedup"] == pytest.approx(2.5)


@pytest.mark.stack_independent
def test_kernel_suite_on_cpu(tmp_path):
    out = tmp_path / "kernels.json"
    # the default kernels and models at M=1 and 3 rounds: CI time (248 s at three M, 226 s at two, 140 s at one);
    # every kernel, shape and assertion of the default suite is kept. The crossover over M is tested on fixed
    # figures above, and each kernel's choice at other rows in tests/test_kernel_fields.py.
    result = run_pytest("benchmarks/test_kernels.py", "--qb-m", "1", "--qb-rounds", "3", f"--benchmark-json={out}",
                        "-q")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "crossover M (quantized kernel stops beating torch-fp16)" in result.stdout
    data = json.loads(out.read_text())
    assert data["quantbench"]["peaks"]["memory_gbps"] > 0 and data["quantbench"]["crossover"]
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        assert info["time_per_call_s"] > 0 and info["tflops"] > 0 and info["gbps"] > 0
        assert info["pct_peak_gbps"] > 0 and info["pct_peak_tflops"] > 0
        assert info["rel_err_vs_fp32"] <= info["rel_err_bound"]
        # on a CPU the calls run from Python (a CUDA graph's replay is the GPU's: GPU only), against the floor of a
        # one-element add timed the same way
        assert info["timing"] == "host loop, synchronized per round" and 0 < info["launch_floor_s"] < 1e-3
        assert info["near_launch_floor"] == (info["time_per_call_s"] < info["launch_floor_s"] + 3e-6)
    shapes = {(b["extra_info"]["K"], b["extra_info"]["N"]) for b in data["benchmarks"]}
    assert (5632, 2048) in shapes and (2048, 256) in shapes  # TinyLlama down and k/v projections
    states = data["quantbench"]["states"]
    cuda_only = {"awq-gemm-awq_ext", "awq-gemm-triton", "awq-gemv", "fp8-scaled-mm", "awq-hf-gemm", "awq-hf-gemv",
                 "awq-hf-triton", "awq-hf-marlin", "awq-hf-machete", "gptq-triton", "gptq-marlin", "gptq-exllamav2",
                 "gptq-machete"}
    needs_gptqmodel_ = {"awq-hf-aten", "awq-hf-torch", "gptq-aten", "gptq-torch", "gptq-torch-fused"}
    expected = cuda_only if gptqmodel_stack() else cuda_only | needs_gptqmodel_
    # bitsandbytes and torchao: stated where the stack does not install them
    expected |= {name for name in ("bnb-nf4", "bnb-int8", "torchao-int8da8w", "torchao-int4wo")
                 if KERNELS[name].unsupported_reason(torch.device("cpu"))}
    # vLLM's int8 kernel: stated where vLLM is not installed, or on a CPU without VNNI (it saturates there)
    expected |= {"vllm-int8-scaled-mm"} if KERNELS["vllm-int8-scaled-mm"].unsupported_reason(torch.device("cpu")) \
        else set()
    assert {s["kernel"] for s in states} == expected
    if gptqmodel_stack():
        # every weight copy is warmed before the rounds: gptqmodel's TorchLinear spends ~65 ms on a module's first
        # call and ~0.5 ms after; 8e986b3 timed the first calls of the copies it rotated through (92 ms a call)
        torch_int4 = [b["extra_info"]["time_per_call_s"] for b in data["benchmarks"]
                      if b["extra_info"]["kernel"] == "gptq-torch" and b["extra_info"]["model"] == "tiny"]
        assert torch_int4 and max(torch_int4) < 0.01, torch_int4
    if gptqmodel_stack():  # gptqmodel's ATen int4 kernel beats fp16 at M=1 on 1.1B shapes (measured 3.4x, GPTQ 3.4x)
        for name in ("awq-hf-aten", "gptq-aten"):
            assert any(row["kernel"] == name and row["model"] == "tinyllama-1.1b" and row["speedup_at_min_M"] > 1
                       for row in data["quantbench"]["crossover"]), (name, data["quantbench"]["crossover"])


@needs_gptqmodel
@pytest.mark.parametrize("name", ["awq-hf-aten", "awq-hf-torch"])
def test_gptqmodel_kernels_match_fp32_and_are_repacked_before_timing(name):
    kernel = kernels.KERNELS[name]
    prepared = kernel.prepare(512, 256, torch.device("cpu"), copies=3, seed=5)
    # TorchAtenAwqLinear converts its weights to int4pack on its first forward: every copy must have
    # had it before the first timed call (seen: 150 ms per call instead of 5 ms on 1.1B shapes).
    assert all(mod.linear_mode == "inference" for mod in prepared.copies if hasattr(mod, "linear_mode"))
    assert prepared.path.startswith("gptqmodel ")
    x = torch.randn(4, 512).to(kernel.dtype)
    err = kernels.rel_err(prepared.call(x, prepared.copies[2]), x.float() @ prepared.reference_weight.t())
    assert err <= kernels.tolerance(kernel), err


@needs_gptqmodel
def test_gptqmodel_cuda_kernels_are_stated_on_cpu():
    for name in ("awq-hf-marlin", "awq-hf-machete", "awq-hf-gemm", "awq-hf-gemv"):
        reason = kernels.KERNELS[name].unsupported_reason(torch.device("cpu"))
        assert reason and reason.startswith("gptqmodel has no AWQ kernel for backend"), (name, reason)


class _RecordingAwqExt:
    """AutoAWQ's awq_ext CUDA extension's two GEMM entry points, recording which one WQLinear_GEMM calls."""

    def __init__(self):
        self.called = []

    def gemm_forward_cuda(self, x, qweight, scales, qzeros, split_k):
        self.called.append(("gemm_forward_cuda", tuple(x.shape)))
        return torch.zeros(x.shape[0], scales.shape[1], dtype=x.dtype)

    def dequantize_weights_cuda(self, qweight, scales, qzeros, *args):
        self.called.append(("dequantize_weights_cuda", tuple(qweight.shape)))
        return torch.zeros(qweight.shape[0], scales.shape[1], dtype=scales.dtype)


def test_autoawqs_gemm_kernel_runs_at_small_m_and_dequantizes_only_from_1024_tokens(monkeypatch):
    """AutoAWQ's WQLinear_GEMM (its own forward, the kernel suite's input) switches to dequantize + matmul at
    x.shape[0] * x.shape[1] >= 1024, meant for [B, T, K]: 3ae1c25 passed [M, K], so M * K (4096 at M=1) sent
    every case, the H100 figures included, down the dequantize path. The CUDA extension is replaced by a recorder
    (GPU only: its arithmetic); the switch and the call are AutoAWQ's."""
    from awq.modules.linear import gemm
    recorder = _RecordingAwqExt()
    monkeypatch.setattr(gemm, "awq_ext", recorder)
    kernel = KERNELS["awq-gemm-awq_ext"]
    prepared = kernel.prepare(4096, 256, torch.device("cpu"), copies=1)
    for m in (1, 64, 1024):
        prepared.call(torch.randn(m, 4096, dtype=torch.float16), prepared.copies[0])
    assert [name for name, _ in recorder.called] == ["gemm_forward_cuda", "gemm_forward_cuda",
                                                     "dequantize_weights_cuda"], recorder.called
    assert recorder.called[0][1] == (1, 4096)
    assert "dequantize + matmul from 1024 ([1, M, K] input)" in prepared.path


@needs_gptqmodel
def test_gptqmodels_exllamav2_gets_the_scratch_space_its_post_init_takes(monkeypatch):
    """gptqmodel 7.5's ExllamaV2Linear.post_init(scratch_space) writes its dequantized temp into a
    ScratchSpace; 3ae1c25 called post_init() bare: a TypeError for every gptq-exllamav2 kernel case. Its two
    CUDA extension calls are replaced by recorders (GPU only); post_init, the ScratchSpace and the sizes are
    gptqmodel's."""
    from gptqmodel.nn_modules.qlinear.exllamav2 import ExllamaV2Linear

    from quantbench.kernels.gptq import rtn_symmetric
    from quantbench.kernels.ops import gptqmodel_prepared
    made = []

    def make_q_matrix(self, w, temp_dq, key=None):
        made.append(temp_dq.numel() * temp_dq.element_size())
        return "q_handle"

    ok = classmethod(lambda cls: (True, None))  # its check that the CUDA extension loaded (and gptqmodel's cache of it)
    monkeypatch.setattr(ExllamaV2Linear, "validate_once", ok)
    monkeypatch.setattr(ExllamaV2Linear, "cached_validate_once", ok)
    monkeypatch.setattr(ExllamaV2Linear, "ext_make_q_matrix", make_q_matrix)
    monkeypatch.setattr(ExllamaV2Linear, "ext_gemm_half_q_half",
                        lambda self, x, handle, width, force: torch.zeros(*x.shape[:-1], width, dtype=torch.float16))
    k, n = 256, 128
    ref = rtn_symmetric(torch.randn(n, k))[0]
    buffers = {"qweight": torch.zeros(k // 8, n, dtype=torch.int32),
               "qzeros": torch.zeros(k // 128, n // 8, dtype=torch.int32),
               "scales": torch.ones(k // 128, n, dtype=torch.float16),
               "g_idx": torch.arange(k, dtype=torch.int32) // 128}
    prepared = gptqmodel_prepared(ExllamaV2Linear, buffers, ref, k, n, torch.device("cpu"), 2, torch.float16, sym=True)
    assert len(prepared.copies) == 2 and all(m.q_handle == "q_handle" for m in prepared.copies)
    assert made == [k * n * 2 + 128] * 2  # the slice of the scratch space its dequantize writes (temp_dq_size)


@pytest.mark.stack_independent
def test_a_kernel_call_at_the_launch_floor_is_flagged():
    """A call that takes what launching a one-element add takes times the launch, not the kernel (the H100 run's
    torch-fp16 at M=1: 1.8% of peak bandwidth from Python's launches). On CUDA the case is timed by a CUDA
    graph's replay instead (GPU only); here the host loop's flag is checked on a call of that floor."""
    from types import SimpleNamespace

    from quantbench.bench.kernel_runner import NEAR_FLOOR_S, launch_floor_s, timed_loop
    cpu = torch.device("cpu")
    one = torch.zeros(1)
    prepared = SimpleNamespace(copies=[one, one.clone()], call=lambda x, w: w.add_(0))
    run, calls, timing = timed_loop(prepared, None, cpu, 1000)
    assert calls == 1000 and timing.startswith("host loop")
    import time
    start = time.perf_counter()
    run()
    per_call = (time.perf_counter() - start) / calls
    floor = launch_floor_s(cpu, graphed=False)
    assert per_call < floor * 3 + NEAR_FLOOR_S  # the no-op kernel sits at the floor the flag compares with


@pytest.mark.stack_independent
def test_every_weight_copy_is_warmed_before_a_round_is_timed():
    """A library that does one-time work on a module's first call (gptqmodel's TorchLinear on CPU: ~65 ms, then
    ~0.5 ms) must not have that work timed: the rounds rotate through the weight copies, and 8e986b3 met most of
    them first inside a round. A stand-in whose copies cost 30 ms on their first call and nothing after."""
    import time
    from types import SimpleNamespace

    from quantbench.bench.kernel_runner import timed_loop, warm_copies
    met = set()

    def call(x, copy):
        if copy not in met:
            met.add(copy)
            time.sleep(0.03)
        return x

    prepared = SimpleNamespace(copies=list(range(12)), call=call)
    cpu, x = torch.device("cpu"), torch.zeros(1)
    warm_copies(prepared, x, cpu)
    run, iters, _ = timed_loop(prepared, x, cpu, iters=4)
    start = time.perf_counter()
    for _ in range(3):  # three rounds: 12 calls, every copy once
        run()
    assert (time.perf_counter() - start) / (3 * iters) < 0.003
