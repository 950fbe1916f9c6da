"""bitsandbytes checkpoints (quantbench.formats.bitsandbytes): nf4 with and without double quant and
LLM.int8 detected by their flags, bitsandbytes' own ops named, its dequantized weights the guard's
reference, a user's own nf4 checkpoint benchmarked by path."""

import pytest
import torch

from quantbench.bench.pool import ModelPool, ModelSource
from quantbench.errors import BadCheckpoint
from quantbench.formats import get_format
from quantbench.formats.checkpoints import detect_checkpoint

from .family_helpers import checkpoint_with, inspect_and_bench, make_user_checkpoint

NF4 = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
       "bnb_4bit_use_double_quant": False}
needs_bnb = pytest.mark.skipif(bool(get_format("bnb-nf4").unsupported_reason(torch.device("cpu"))),
                               reason=str(get_format("bnb-nf4").unsupported_reason(torch.device("cpu"))))


@pytest.mark.parametrize("config, kind", [(NF4, "bnb-nf4"), ({**NF4, "bnb_4bit_use_double_quant": True}, "bnb-nf4-dq"),
                                          ({"quant_method": "bitsandbytes", "load_in_8bit": True}, "bnb-int8")])
def test_bitsandbytes_configs_are_detected_by_their_flags(tmp_path, config, kind):
    found = detect_checkpoint(checkpoint_with(tmp_path, config))
    assert (found.kind, found.formats, found.quant_method) == (kind, (kind,), "bitsandbytes")


def test_fp4_and_a_config_without_bits_are_one_line_with_the_fix(tmp_path):
    with pytest.raises(BadCheckpoint, match="unsupported bitsandbytes 4-bit type 'fp4'.*nf4"):
        detect_checkpoint(checkpoint_with(tmp_path / "fp4", {**NF4, "bnb_4bit_quant_type": "fp4"}))
    with pytest.raises(BadCheckpoint, match="neither load_in_4bit nor load_in_8bit"):
        detect_checkpoint(checkpoint_with(tmp_path / "none", {"quant_method": "bitsandbytes"}))


@needs_bnb
def test_bitsandbytes_ops_are_named_and_its_dequantized_weights_are_the_reference(tiny_checkpoints):
    from bitsandbytes.functional import has_avx512bf16
    pool = ModelPool(torch.device("cpu"))
    for name, op in (("bnb-nf4", "bitsandbytes::gemv_4bit"), ("bnb-nf4-dq", "bitsandbytes::gemv_4bit"),
                     ("bnb-int8", "bitsandbytes::int8_linear_matmul")):
        prepared = pool.get(ModelSource.from_spec("tiny"), name)
        kernel = prepared.loaded.facts["kernel"]
        if name.startswith("bnb-nf4") and not has_avx512bf16():  # no fused CPU kernel: dequantize every call
            assert "naive dequantize + matmul: " in kernel and "dequantize_4bit" in kernel, kernel
        else:
            assert op in kernel and "naive" not in kernel, kernel
        assert prepared.guard.passed and prepared.guard.cosine_vs_fakequant > 0.9995, prepared.guard.message()
    pool.release()


@needs_bnb
@pytest.mark.slow
def test_a_users_nf4_checkpoint_is_detected_and_benchmarked(tmp_path):
    """Made by tools/user_bnb_checkpoint.py with BitsAndBytesConfig: nf4, double quant, its own shape."""
    user_dir = tmp_path / "user-bnb"
    make_user_checkpoint("user_bnb_checkpoint.py", user_dir)
    inspected, data = inspect_and_bench(user_dir, tmp_path)
    assert (inspected["kind"], inspected["quant_method"]) == ("bnb-nf4-dq", "bitsandbytes")
    assert {(b["extra_info"]["format"], b["extra_info"]["phase"]) for b in data["benchmarks"]} == \
        {("bnb-nf4-dq", "prefill"), ("bnb-nf4-dq", "decode")}
    for bench in data["benchmarks"]:
        assert "Linear4bit [nf4]" in bench["extra_info"]["kernel"] and bench["extra_info"]["guard"]["passed"]


def test_a_4bit_matmul_that_dequantizes_every_call_is_a_naive_fallback_in_the_guide(monkeypatch):
    """Without its fused kernel (on a CPU: no AVX-512 BF16) bitsandbytes dequantizes the whole weight every
    call: the kernel string says so and the guide's findings flag it; its fused gemv is not flagged."""
    import pandas as pd

    from quantbench.formats import bitsandbytes as family
    from quantbench.report import findings
    model = torch.nn.Module()
    model.q_proj = torch.nn.Linear(4, 4)

    def naive_flags(ops: dict) -> list[str]:
        monkeypatch.setattr(family, "projection_ops", lambda *args: ops)
        kernel = get_format("bnb-nf4").kernel(model, torch.device("cpu"))
        rows = pd.DataFrame([{"model": "m", "format": "bnb-nf4", "kernel": kernel, "state": "ok", "prompt_len": 1,
                              "phase": "decode", "batch": 1, "decode_tokens_per_s": 1.0, "bits": 4,
                              "weight_bytes_after_load": 1, "weight_bytes_after_first_forward": 1}])
        return [f for f in findings.flags(rows) if f.startswith("NAIVE FALLBACK")]
    flagged = naive_flags({"bitsandbytes::dequantize_4bit": 1, "aten::linear": 1})
    assert flagged and "naive dequantize + matmul: bitsandbytes::dequantize_4bit, aten::linear" in flagged[0]
    assert not naive_flags({"bitsandbytes::gemv_4bit": 1})
