"""torchao checkpoints (PyTorch's own quantization, the one torch.compile is built for): int4
weight-only and int8 dynamic-activation + int8-weight, loaded by transformers' TorchAoConfig.

torchao quantizes by swapping each Linear's weight for a tensor subclass (``Int8Tensor``,
``Int4TilePackedTo4dTensor``, ...) whose matmul dispatches to a torch kernel: ``aten::_int_mm`` for
int8 x int8, tinygemm's ``_weight_int4pack_mm`` for int4 on CUDA. A subclass names no kernel, so the
kernel string is what torch's profiler saw one projection call. Which int4 packing runs where is
torchao's per version: 0.18 saves none that runs on a CPU (``plain`` and ``preshuffled`` need the mslk
package, ``plain_int32`` is XPU-only, ``tile_packed_to_4d`` is CUDA's tinygemm); its CPU int4 kernel
(``_weight_int4pack_mm_for_cpu``) is reached only through a prototype config whose tensor its safetensors
support refuses to save. The format states that; the kernel suite, which needs no checkpoint, measures it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from ..errors import BadCheckpoint, Unsupported
from .base import Format, builder, detects, dtype_kwargs, from_pretrained_strict, ops_words, projection_ops, register

# checkpoint kind -> torchao's config class, and the old string name transformers also accepts
KIND_CONFIGS = {
    "torchao-int4wo": ("Int4WeightOnlyConfig", "int4_weight_only"),
    "torchao-int8da8w": ("Int8DynamicActivationInt8WeightConfig", "int8_dynamic_activation_int8_weight"),
}
GROUP_SIZE = 128


def _config_name(qc: dict) -> str:
    quant_type = qc.get("quant_type")
    if isinstance(quant_type, dict):  # serialized AOBaseConfig(s): {"default": {"_type": ..., "_data": ...}}
        entry = quant_type.get("default", next(iter(quant_type.values()), {}))
        return str(entry.get("_type", "")) if isinstance(entry, dict) else str(entry)
    return str(quant_type or "")


@detects("torchao")
def torchao_kind(config_path: Path, qc: dict) -> str:
    name = _config_name(qc)
    kind = next((k for k, names in KIND_CONFIGS.items() if name in names), None)
    if kind is None:
        known = ", ".join(names[0] for names in KIND_CONFIGS.values())
        raise BadCheckpoint(config_path, f"unsupported torchao quant_type {name or qc.get('quant_type')!r}",
                            f"quantbench runs {known}; re-quantize with one")
    return kind


def int4_packing(device: torch.device) -> str:
    """The Int4WeightOnlyConfig packing this torchao saves and runs on ``device``; Unsupported where none.
    On a CPU torchao 0.18 runs int4 weight-only only as its prototype config (Int4OpaqueTensor, torch's
    ``_weight_int4pack_mm_for_cpu``), which its safetensors support cannot save: no checkpoint of it exists."""
    import torchao
    from torchao.quantization.quantize_.workflows.int4.int4_packing_format import Int4PackingFormat
    formats = {f.value for f in Int4PackingFormat}
    if device.type == "cuda":
        return "tile_packed_to_4d"  # tinygemm
    if device.type == "cpu" and "opaque" in formats:  # older torchao: the CPU packing was a saveable format
        return "opaque"
    cpu = (" It runs int4 on a CPU only as PrototypeInt4WeightOnlyConfig (Int4OpaqueTensor, "
           "_weight_int4pack_mm_for_cpu), which its safetensors support does not save (the kernel suite "
           "measures that kernel)." if device.type == "cpu" and _prototype_int4() else "")
    raise Unsupported(f"torchao {torchao.__version__} has no saveable int4 weight-only packing for {device.type}: "
                      f"{sorted(formats)} (plain and preshuffled need the mslk package, plain_int32 runs on XPU, "
                      f"tile_packed_to_4d is CUDA's tinygemm).{cpu}")


def _prototype_int4():
    """torchao's CPU int4 weight-only config class (0.18: a prototype), or None."""
    try:
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
    except ImportError:
        return None
    return PrototypeInt4WeightOnlyConfig


def torchao_missing(device: torch.device, kind: str, saved: bool = True) -> str | None:
    """Why torchao cannot run ``kind`` on ``device`` here, or None; ``saved=False``: a weight quantized in this
    process (the kernel suite), where a CPU int4 config that cannot be saved still runs."""
    if importlib.util.find_spec("torchao") is None:
        return "torchao is not installed (pip install torchao==0.18.0; the current stack's extra has it)"
    import transformers
    if saved and transformers.__version__.startswith("4."):
        return (f"transformers {transformers.__version__} cannot load torchao's version-2 configs from safetensors "
                "(the current stack's transformers 5.x can)")
    if kind == "torchao-int4wo":
        try:
            quant_config(kind, device, saved)
        except Unsupported as exc:
            return str(exc)
    return None


def quant_config(kind: str, device: torch.device, saved: bool = True):
    """torchao's config for ``kind`` on ``device``; ``saved=False`` allows one that cannot be saved.
    ``set_inductor_config=False``: torchao's default sets five ``torch._inductor.config`` flags for the rest of
    the process (coordinate descent tuning, fused int_mm, ...), so every compiled case after a torchao build
    would compile under other settings than the same case in a process that built nothing."""
    from torchao import quantization
    name = KIND_CONFIGS[kind][0]
    if kind != "torchao-int4wo":
        return _without_inductor_setter(getattr(quantization, name))()
    if not saved and device.type == "cpu" and _prototype_int4():
        return _without_inductor_setter(_prototype_int4())(group_size=GROUP_SIZE)
    return _without_inductor_setter(getattr(quantization, name))(group_size=GROUP_SIZE,
                                                                  int4_packing_format=int4_packing(device))


def _without_inductor_setter(config_class):
    """``config_class`` with ``set_inductor_config=False`` bound where the class takes it."""
    import dataclasses
    import functools
    if any(f.name == "set_inductor_config" for f in dataclasses.fields(config_class)):
        return functools.partial(config_class, set_inductor_config=False)
    return config_class


def dequantized_weight(weight, dense: torch.Tensor) -> torch.Tensor:
    """A torchao weight as fp32 [N, K]: torchao's own ``dequantize``, or, for an int4 tensor that implements
    none (CUDA's ``Int4TilePackedTo4dTensor`` and the CPU prototype's ``Int4OpaqueTensor`` in 0.18 raise
    NotImplementedError through their dispatch), torchao's tinygemm quantize-dequantize of the same ``dense``
    weight with the asymmetric group-wise parameters those tensors pack (torchao's primitives, not the kernel
    under test)."""
    try:
        return weight.dequantize().float()
    except NotImplementedError:
        if "Int4" not in type(weight).__name__:
            raise
        from torchao.quantization.quant_primitives import (
            MappingType,
            _choose_qparams_affine_tinygemm,
            _dequantize_affine_tinygemm,
            _quantize_affine_tinygemm,
        )
        w = dense.to(weight.dtype)
        block = [1, GROUP_SIZE]  # the group quant_config gave torchao
        scale, zero = _choose_qparams_affine_tinygemm(w, MappingType.ASYMMETRIC, block, torch.int32, 0, 15, 1e-6,
                                                      None, w.dtype)
        q = _quantize_affine_tinygemm(w, block, scale, zero, torch.int32, 0, 15)
        return _dequantize_affine_tinygemm(q, block, scale, zero, torch.int32, 0, 15, output_dtype=w.dtype).float()


def fakequant_weights(model, dense_dir) -> dict[str, torch.Tensor]:
    """Each torchao-quantized Linear's weight as torchao computes with it, fp32 [out, in], by module name; the
    dense weight an int4 fallback needs is read from the dense checkpoint by name, one at a time."""
    from safetensors import safe_open
    quantized = {name: module.weight for name, module in model.named_modules()
                 if isinstance(module, torch.nn.Linear) and hasattr(module.weight, "tensor_data_names")}
    out = {}
    for path in sorted(Path(dense_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in f.keys():  # noqa: SIM118 - safetensors' handle, not a dict
                name = key.removesuffix(".weight")
                if name in quantized and name not in out:
                    weight = quantized[name]
                    out[name] = dequantized_weight(weight, f.get_tensor(key).to(weight.device))
    missing = sorted(set(quantized) - set(out))
    if missing:
        raise BadCheckpoint(Path(dense_dir), f"no dense weight for {missing[0]} (and {len(missing) - 1} more)",
                            "rebuild the dense checkpoint (quantbench fixtures build --force)")
    return out


class _TorchAO(Format):
    library = "transformers+torchao"
    dtype = torch.bfloat16

    def unsupported_reason(self, device):
        return torchao_missing(device, self.checkpoint)

    def load(self, ckpt_dir, device):
        return from_pretrained_strict(ckpt_dir, device, self.dtype)

    def kernel(self, model, device):
        from ..environment import version
        proj = next(m for n, m in model.named_modules() if n.endswith("q_proj"))
        return (f"torchao {version('torchao')} {type(proj.weight).__name__} -> "
                f"{ops_words(projection_ops(model, device))}")


@register
class TorchAOInt4WO(_TorchAO):
    name = checkpoint = "torchao-int4wo"
    bits = 4
    description = "torchao int4 weight-only (group 128, asymmetric; tinygemm on CUDA), bf16 activations"


@register
class TorchAOInt8DA8W(_TorchAO):
    name = checkpoint = "torchao-int8da8w"
    bits = 8
    description = "torchao int8 dynamic per-token activations x int8 per-channel weights (aten::_int_mm)"
    min_cosine = 0.985  # activations are rounded to int8 per token too, as for ct-w8a8


# ----------------------------------------------------------------------------- building
def _build(kind: str):
    def build(spec, dense_dir, out_dir, device, reference, calibration_texts):
        missing = torchao_missing(device, kind)
        if missing:
            raise Unsupported(missing)
        from transformers import AutoModelForCausalLM, AutoTokenizer, TorchAoConfig

        from .reference import dequantized_reference
        model = AutoModelForCausalLM.from_pretrained(
            str(dense_dir), device_map={"": str(device)},
            quantization_config=TorchAoConfig(quant_type=quant_config(kind, device)),
            **dtype_kwargs(torch.bfloat16)).eval()
        weights = fakequant_weights(model, dense_dir)
        model.save_pretrained(str(out_dir), safe_serialization=True)
        AutoTokenizer.from_pretrained(str(dense_dir)).save_pretrained(str(out_dir))
        fakequant = dequantized_reference(dense_dir, weights, reference["ids"], device)
        torch.save({"ids": reference["ids"], **fakequant}, Path(out_dir) / "quantbench_fakequant.pt")
        return {"torchao_config": KIND_CONFIGS[kind][0], "quantized_linears": len(weights)}
    return build


for _kind in KIND_CONFIGS:
    builder(_kind, ("torchao",))(_build(_kind))
