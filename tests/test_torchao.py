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


@pytest.mark.skipif(bool(get_format("torchao-int8da8w").unsupported_reason(torch.device("cpu"))),
                    reason="torchao is not installed, or this transformers cannot load its checkpoints")
def test_a_torchao_weight_without_dequantize_still_gives_the_fakequant_reference(tiny_checkpoints):
    """torchao 0.18's CUDA int4 tensor (Int4TilePackedTo4dTensor) implements no ``dequantize``: 3ae1c25's
    builder called it and crashed on every case. The CPU's int4 tensor (Int4OpaqueTensor, the prototype config)
    has none either: the builder's weights, from a model quantized that way here, must be what the tensor
    computes with (the CUDA class itself needs a GPU)."""
    from torchao.quantization import quantize_
    from transformers import AutoModelForCausalLM

    from quantbench.formats.checkpoints import checkpoint_dir
    from quantbench.formats.torchao import fakequant_weights, quant_config
    from quantbench.specs import load_spec
    dense_dir = checkpoint_dir(load_spec("tiny"), "dense")
    model = AutoModelForCausalLM.from_pretrained(str(dense_dir), dtype=torch.bfloat16).eval()
    quantize_(model.model.layers[0], quant_config("torchao-int4wo", torch.device("cpu"), saved=False))
    proj = model.model.layers[0].self_attn.q_proj
    with pytest.raises(NotImplementedError):
        proj.weight.dequantize()  # what 3ae1c25's builder called
    weights = fakequant_weights(model, dense_dir)
    assert len(weights) == 7 and "model.layers.0.self_attn.q_proj" in weights  # layer 0's projections only
    x = torch.randn(3, proj.in_features, dtype=torch.bfloat16)
    with torch.no_grad():
        ran, ref = proj(x).float(), x.float() @ weights["model.layers.0.self_attn.q_proj"].T
    assert torch.nn.functional.cosine_similarity(ran.flatten(), ref.flatten(), dim=0) > 0.999


@pytest.mark.skipif(bool(get_format("torchao-int8da8w").unsupported_reason(torch.device("cpu"))),
                    reason="torchao is not installed")
def test_a_torchao_quantization_leaves_the_processs_inductor_settings_alone():
    """torchao's configs default to set_inductor_config=True, which sets coordinate-descent tuning, fused int_mm
    and more for the rest of the process: 3ae1c25's +compile cases after a torchao build compiled under other
    settings than the same cases in a run that built nothing."""
    import torch._inductor.config as inductor
    from torchao.quantization import quantize_

    from quantbench.formats.torchao import quant_config
    before = inductor.save_config_portable()
    for kind in ("torchao-int8da8w", "torchao-int4wo"):
        layer = torch.nn.Sequential(torch.nn.Linear(256, 256, bias=False, dtype=torch.bfloat16))
        quantize_(layer, quant_config(kind, torch.device("cpu"), saved=False))
    assert inductor.save_config_portable() == before
