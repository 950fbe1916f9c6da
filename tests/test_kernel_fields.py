"""The kernel as fields, observed at each case's own shape (bench.kernel_fields; issue 32).

3ae1c25 probed the kernel once, at one row, and stored prose: every case of a model carried the batch-1 string, and
the guide's NAIVE FALLBACK was a substring match that exempted every named-backend format, so a oneDNN ``ref``
under gptq-* or awq-gemm-hf-* was never flagged."""

import copy
import json

import pytest

from quantbench import gate, history
from quantbench.report import findings

from .conftest import run_pytest

SHAPES = ["--qb-models", "tiny", "--qb-batch", "1,4", "--qb-prompt", "16", "--qb-new-tokens", "4", "--qb-rounds", "2"]


@pytest.fixture(scope="module")
def observed_run(tiny_checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("kernel-fields") / "run.json"
    result = run_pytest("benchmarks/test_generation.py", *SHAPES, "--qb-formats", "bf16,gptq-torch,bnb-nf4",
                        f"--benchmark-json={out}", "-q")
    assert result.returncode == 0, result.stdout[-3000:]
    return json.loads(out.read_text())


def _cases(run, fmt):
    return {(b["extra_info"]["phase"], b["extra_info"]["batch"]): b["extra_info"] for b in run["benchmarks"]
            if b["extra_info"]["format"] == fmt}


def test_each_case_carries_the_kernel_observed_at_its_own_rows(observed_run):
    for fmt in ("bf16", "gptq-torch", "bnb-nf4"):
        cases = _cases(observed_run, fmt)
        if not cases:  # bitsandbytes or gptqmodel not in this stack: stated, nothing to observe
            continue
        for (phase, batch), info in cases.items():
            rows = batch * 16 if phase == "prefill" else batch
            assert info["kernel_observed_at"].startswith(f"q_proj, {rows} rows"), (fmt, phase, batch, info)
            assert info["kernel_ops"] and info["kernel_naive_gemm"] in (True, False)
            print(f"{fmt} {phase} b{batch}: {info['kernel_observed_at']}: ops {info['kernel_ops']}, oneDNN "
                  f"{info['kernel_onednn']}, dequantizes {info['kernel_dequantizes']}, chosen by "
                  f"{info['kernel_chosen_by']}")
    gptq = _cases(observed_run, "gptq-torch")
    if gptq:  # gptqmodel's torch backend rebuilds the weight in torch every call; the format names that backend
        assert all(i["kernel_dequantizes"] and i["kernel_chosen_by"] == "named backend" for i in gptq.values())
    assert all(i["kernel_chosen_by"] == "library" for i in _cases(observed_run, "bf16").values())


def test_a_named_backend_on_onednns_reference_gemm_is_flagged(observed_run):
    """The stand-in: this CPU's oneDNN ran no ref GEMM, so the gptq-torch cases at batch 4 are given one, as a CPU
    without the ISA its brgemm needs records it. Before: exempt (its kernel string names backend=torch)."""
    run = copy.deepcopy(observed_run)
    fmt = "gptq-torch" if _cases(run, "gptq-torch") else "bf16"
    for bench in run["benchmarks"]:
        info = bench["extra_info"]
        if info["format"] == fmt and info["batch"] == 4:
            info["kernel_naive_gemm"] = True
            info["kernel_onednn"] = ["matmul ref:any (f32 x f32 -> f32)"]
    flags = findings.flags(history.frame_of([("run.json", run)]))
    naive = [f for f in flags if f.startswith("NAIVE FALLBACK") and "reference GEMM" in f]
    assert len(naive) == 1 and f"{fmt} ran oneDNN's reference GEMM (matmul ref:any (f32 x f32 -> f32))" in naive[0]
    assert "4 rows (decode step, batch 4)" in naive[0] and "1 rows" not in naive[0]
    assert not [f for f in findings.flags(history.frame_of([("run.json", observed_run)])) if "reference GEMM" in f]


def test_the_gate_sees_a_kernel_change_at_one_shape_and_not_a_baseline_without_fields(observed_run):
    moved = copy.deepcopy(observed_run)
    old = copy.deepcopy(observed_run)
    for bench in moved["benchmarks"]:
        if bench["extra_info"]["batch"] == 4 and bench["extra_info"]["format"] == "bf16":
            bench["extra_info"]["kernel_onednn"] = ["matmul ref:any (bf16 x bf16 -> bf16)"]
            bench["extra_info"]["kernel_naive_gemm"] = True
    for bench in old["benchmarks"]:  # a baseline recorded before the fields existed
        for key in [k for k in bench["extra_info"] if k.startswith("kernel_")]:
            del bench["extra_info"][key]
    changes = gate.kernel_changes(gate.kernels_ran(moved), [gate.kernels_ran(observed_run)])
    assert {c.case.split("[")[1] for c in changes} == {"tiny-bf16-transformers-b4-p16-prefill]",
                                                      "tiny-bf16-transformers-b4-p16-decode]"}
    assert "oneDNN matmul ref:any" in changes[0].note
    assert not gate.kernel_changes(gate.kernels_ran(observed_run), [gate.kernels_ran(old)])
