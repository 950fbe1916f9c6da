"""GPTQ checkpoints (quantbench.formats.gptq): detected by quant_method, gptqmodel's kernel picked and
named, the fake-quant reference unpacked exactly, a user's own GPTQ checkpoint benchmarked by path."""

import pytest
import torch

from quantbench.bench.pool import ModelPool, ModelSource
from quantbench.errors import BadCheckpoint
from quantbench.formats.checkpoints import detect_checkpoint

from .conftest import needs_gptqmodel
from .family_helpers import checkpoint_with, inspect_and_bench, make_user_checkpoint

GPTQ = {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True, "desc_act": False}


@pytest.mark.parametrize("config, kind", [(GPTQ, "gptq"), ({**GPTQ, "desc_act": True}, "gptq-desc-act"),
                                          ({**GPTQ, "group_size": 64, "checkpoint_format": "gptq_v2"}, "gptq")])
def test_gptq_configs_are_detected_by_quant_method(tmp_path, config, kind):
    found = detect_checkpoint(checkpoint_with(tmp_path, config))
    assert (found.kind, found.quant_method) == (kind, "gptq") and found.formats[0] == kind
    if kind == "gptq":  # every gptqmodel backend runs a plain GPTQ checkpoint
        assert {"gptq-torch", "gptq-marlin", "gptq-machete"} <= set(found.formats)


@pytest.mark.parametrize("change, words", [({"bits": 8}, "unsupported GPTQ bits 8"),
                                           ({"group_size": 96}, "unsupported GPTQ group_size 96"),
                                           ({"checkpoint_format": "marlin"}, "unsupported GPTQ checkpoint_format")])
def test_a_gptq_checkpoint_it_cannot_run_is_one_line_naming_config_json(tmp_path, change, words):
    with pytest.raises(BadCheckpoint) as bad:
        detect_checkpoint(checkpoint_with(tmp_path, {**GPTQ, **change}))
    line = bad.value.line()
    assert "config.json" in line and words in line and "\n" not in line


@needs_gptqmodel
def test_unpacking_inverts_gptqmodels_own_packing():
    """The guard's fake-quant reference reads qweight/qzeros/scales as gptqmodel packs them."""
    from quantbench.formats.gptq import unpack_gptq_weight
    from quantbench.formats.gptqmodel import import_gptqmodel
    import_gptqmodel()  # the project's import of it, which undoes the process settings gptqmodel's import makes
    from gptqmodel.nn_modules.qlinear.torch import TorchLinear

    from quantbench.kernels.gptq import rtn_symmetric
    k, n, group = 256, 64, 128
    ref, scales, zeros = rtn_symmetric(torch.randn(n, k, generator=torch.Generator().manual_seed(1)), group)
    linear = torch.nn.Linear(k, n, bias=False, dtype=torch.float16)
    linear.weight.data = ref.to(torch.float16)
    packed = TorchLinear(bits=4, group_size=group, sym=True, desc_act=False, in_features=k, out_features=n,
                         bias=False, register_buffers=True)
    packed.pack(linear, scales, zeros, torch.arange(k, dtype=torch.int32) // group)
    # In memory gptqmodel holds gptq_v2 zero points; its save writes v1 (zero - 1), which config.json names.
    got = unpack_gptq_weight(packed.qweight, packed.qzeros, packed.scales, packed.g_idx, "gptq_v2")
    assert torch.allclose(got, ref, rtol=2e-3, atol=2e-3), (got - ref).abs().max()  # fp16 scales
    as_v1 = unpack_gptq_weight(packed.qweight, packed.qzeros, packed.scales, packed.g_idx, "gptq")
    assert torch.allclose(got - as_v1, packed.scales.float().t().repeat_interleave(group, 1), atol=1e-3)


@needs_gptqmodel
def test_gptq_auto_runs_the_aten_int4_kernel_and_holds_a_third_of_the_weights(tiny_checkpoints):
    pool = ModelPool(torch.device("cpu"))
    tiny = ModelSource.from_spec("tiny")
    dense = pool.get(tiny, "fp16").loaded.facts["weight_bytes_after_first_forward"]
    for name, cls in (("gptq", "TorchAtenLinear"), ("gptq-desc-act", "TorchAtenLinear"), ("gptq-torch", "TorchLinear")):
        prepared = pool.get(tiny, name)
        facts = prepared.loaded.facts
        assert facts["linear_classes"] == {cls: 14} and f"-> {cls}: " in facts["kernel"]
        assert facts["weight_bytes_after_first_forward"] < 0.5 * dense
        # calibrated GPTQ is close to its own dequantized weights; the kernel must match them
        assert prepared.guard.cosine_vs_fakequant > 0.9999, prepared.guard.message()
        assert ("naive dequantize" in facts["kernel"]) == (name == "gptq-torch")
    pool.release()


@needs_gptqmodel
@pytest.mark.slow
def test_a_users_gptq_checkpoint_is_detected_and_benchmarked(tmp_path):
    """Made by tools/user_gptq_checkpoint.py with gptqmodel's API: act order, group 64, its own shape."""
    user_dir = tmp_path / "user-gptq"
    make_user_checkpoint("user_gptq_checkpoint.py", user_dir)
    inspected, data = inspect_and_bench(user_dir, tmp_path, "--qb-runtimes", "transformers,transformers+compile")
    assert (inspected["kind"], inspected["quant_method"]) == ("gptq-desc-act", "gptq")
    ran = {(b["extra_info"]["format"], b["extra_info"]["runtime"], b["extra_info"]["phase"])
           for b in data["benchmarks"]}
    assert {("gptq-desc-act", "transformers", "prefill"), ("gptq-desc-act", "transformers", "decode"),
            ("gptq-desc-act", "transformers+compile", "decode")} <= ran
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        assert "TorchAtenLinear" in info["kernel"] and info["guard"]["passed"] and info["model"] == "dir:user-gptq"
