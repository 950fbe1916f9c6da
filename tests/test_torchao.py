"""torchao checkpoints (quantbench.formats.torchao): detected by their serialized config, the torch op
the tensor subclass dispatched to named, int4 weight-only stated where torchao has no packing."""

import pytest
import torch

from quantbench.bench.pool import ModelPool, ModelSource
from quantbench.errors import BadCheckpoint
from quantbench.formats import get_format
from quantbench.formats.checkpoints import detect_checkpoint

from .family_helpers import checkpoint_with


def _config(name: str) -> dict:  # how transformers 5 serializes a TorchAoConfig of an AOBaseConfig
    return {"quant_method": "torchao", "quant_type": {"default": {"_type": name, "_version": 2, "_data": {}}}}


@pytest.mark.parametrize("config, kind", [
    (_config("Int8DynamicActivationInt8WeightConfig"), "torchao-int8da8w"),
    (_config("Int4WeightOnlyConfig"), "torchao-int4wo"),
    ({"quant_method": "torchao", "quant_type": "int4_weight_only"}, "torchao-int4wo")])  # the older string form
def test_torchao_configs_are_detected_by_their_config_class(tmp_path, config, kind):
    found = detect_checkpoint(checkpoint_with(tmp_path, config))
    assert (found.kind, found.formats, found.quant_method) == (kind, (kind,), "torchao")


def test_an_unknown_torchao_config_is_one_line_naming_the_ones_it_runs(tmp_path):
    with pytest.raises(BadCheckpoint, match="unsupported torchao quant_type 'Float8WeightOnlyConfig'.*"
                                            "Int4WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig"):
        detect_checkpoint(checkpoint_with(tmp_path, _config("Float8WeightOnlyConfig")))


@pytest.mark.skipif(bool(get_format("torchao-int8da8w").unsupported_reason(torch.device("cpu"))),
                    reason=str(get_format("torchao-int8da8w").unsupported_reason(torch.device("cpu"))))
def test_int8_dynamic_runs_torchs_int_mm_and_int4_checkpoints_say_why_not_on_a_cpu(tiny_checkpoints):
    pool = ModelPool(torch.device("cpu"))
    prepared = pool.get(ModelSource.from_spec("tiny"), "torchao-int8da8w")
    facts = prepared.loaded.facts
    assert facts["kernel"].startswith("torchao ") and "Int8Tensor -> " in facts["kernel"]
    assert "aten::_int_mm" in facts["kernel"], facts["kernel"]  # int8 x int8 in torch, not a dequantize
    assert facts["linear_classes"] == {"Linear": 14}  # the weight is the subclass, not the module
    # the subclass's inner tensors are counted (the wrapper holds no storage of its own): int8 weights
    dense = pool.get(ModelSource.from_spec("tiny"), "bf16").loaded.facts["weight_bytes_after_load"]
    assert 0.5 * dense < facts["weight_bytes_after_load"] < 0.7 * dense
    assert prepared.guard.cosine_vs_fakequant > 0.999, prepared.guard.message()
    pool.release()
    import torchao
    reason = get_format("torchao-int4wo").unsupported_reason(torch.device("cpu"))
    if torchao.__version__ == "0.18.0":
        assert reason.startswith("torchao 0.18.0 has no saveable int4 weight-only packing for cpu"), reason
        assert "PrototypeInt4WeightOnlyConfig" in reason  # what does run there: the kernel suite's torchao-int4wo


@pytest.mark.skipif(bool(get_format("torchao-int8da8w").unsupported_reason(torch.device("cpu"))),
                    reason="torchao is not installed")
def test_torchaos_cpu_int4_kernel_runs_torchs_int4pack_mm_and_matches_torchaos_own_rounding():
    from quantbench import kernels
    kernel = kernels.KERNELS["torchao-int4wo"]
    assert kernel.unsupported_reason(torch.device("cpu")) is None  # no checkpoint needed for the kernel
    prepared = kernel.prepare(512, 256, torch.device("cpu"), copies=2, seed=4)
    assert "_weight_int4pack_mm_for_cpu" in prepared.path, prepared.path
    x = torch.randn(4, 512, generator=torch.Generator().manual_seed(1)).to(kernel.dtype)
    err = kernels.rel_err(prepared.call(x, prepared.copies[1]), x.float() @ prepared.reference_weight.t())
    assert err <= kernels.tolerance(kernel), err
    assert prepared.weight_bytes == kernels.weight_bytes("torchao-int4wo", 512, 256)
