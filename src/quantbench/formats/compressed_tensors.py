"""compressed-tensors formats (the llm-compressor checkpoint format), loaded by transformers.

What transformers and compressed-tensors do with a checkpoint on its first forward (decompress to
dense, put every module behind an offload dispatch, wrap every Linear's forward) is recorded per
case, because that is where "a 4-bit model that saves no memory" and its host-bound decode come
from; the -nodispatch and -bare formats strip those layers to measure what they cost
(docs/formats-and-runtimes.md has the figures).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from ..errors import BadCheckpoint
from .base import Format, builder, detects, dtype_kwargs, from_pretrained_strict, register

CT_GROUP_SIZES = (32, 64, 128, None)


def _ct_config(dequantize: bool | None):
    """None = the checkpoint's own config (transformers' default); else force (de)compression."""
    if dequantize is None:
        return {}
    import transformers
    from transformers import CompressedTensorsConfig
    if transformers.__version__.startswith("4."):
        return {"quantization_config": CompressedTensorsConfig(run_compressed=not dequantize)}
    return {"quantization_config": CompressedTensorsConfig(dequantize=dequantize)}


def read_ct_weights_args(ckpt_dir: Path) -> dict:
    path = Path(ckpt_dir) / "config.json"
    qc = json.loads(path.read_text()).get("quantization_config") or {}
    groups = qc.get("config_groups") or {}
    if not groups:
        raise BadCheckpoint(path, "compressed-tensors quantization_config has no config_groups",
                            "re-export the checkpoint with llm-compressor or compressed-tensors")
    group = next(iter(groups.values()))
    weights = group.get("weights") or {}
    if weights.get("strategy") == "group" and weights.get("group_size") not in CT_GROUP_SIZES:
        raise BadCheckpoint(path, f"unsupported compressed-tensors group_size {weights.get('group_size')}",
                            "use group_size 32, 64 or 128")
    return {"format": qc.get("format"), "input_activations": group.get("input_activations"), **weights}


@detects("compressed-tensors")
def ct_kind(config_path: Path, qc: dict) -> str:
    """A compressed-tensors checkpoint: its scheme's weight type and bits, and whether activations
    are quantized too (W8A8), name the kind."""
    weights = read_ct_weights_args(config_path.parent)
    acts, kind = weights.get("input_activations") or {}, None
    if weights.get("type") == "float" and weights.get("num_bits") == 8:
        kind = "ct-fp8"
    elif weights.get("type", "int") == "int" and weights.get("num_bits") == 8:
        kind = "ct-w8a8" if acts.get("type", "int") == "int" and acts.get("num_bits") == 8 else "ct-w8a16"
    elif weights.get("type", "int") == "int" and weights.get("num_bits") == 4 and not acts:
        kind = "ct-w4a16"
    if kind is None:
        raise BadCheckpoint(config_path, f"unsupported compressed-tensors scheme (weights {weights})",
                            "quantbench runs W4A16, W8A16, W8A8 int8 and FP8 schemes")
    return kind


class _CT(Format):
    library = "transformers+compressed-tensors"
    dtype = torch.float16
    dequantize: bool | None = None

    def load(self, ckpt_dir, device):
        read_ct_weights_args(ckpt_dir)
        return from_pretrained_strict(ckpt_dir, device, self.dtype, **_ct_config(self.dequantize))

    def kernel(self, model, device):
        return describe_ct_path(model)

    def first_forward_facts(self, model):
        packed = dense = 0
        for name, module in model.named_modules():
            if not name.endswith(("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")):
                continue
            has_packed = any(hasattr(module, a) and isinstance(getattr(module, a), torch.Tensor)
                             for a in ("weight_packed",))
            weight = getattr(module, "weight", None)
            has_dense = isinstance(weight, torch.Tensor) and weight.dtype in (torch.float16, torch.bfloat16,
                                                                              torch.float32)
            packed += has_packed
            dense += has_dense
        return {"packed_linears_after_first_forward": packed, "dense_linears_after_first_forward": dense,
                "still_compressed_after_first_forward": packed > 0 and dense == 0,
                "kernel": describe_ct_path(model)}


def describe_ct_path(model) -> str:
    for name, module in model.named_modules():
        if name.endswith("q_proj"):
            cls = type(module).__name__
            weight = getattr(module, "weight", None)
            dense = isinstance(weight, torch.Tensor) and weight.dtype in (torch.float16, torch.bfloat16)
            packed = isinstance(getattr(module, "weight_packed", None), torch.Tensor)
            wdtype = str(weight.dtype).replace("torch.", "") if isinstance(weight, torch.Tensor) else "-"
            state = ("packed+dense copy" if packed and dense else "packed" if packed
                     else f"dense {wdtype}")
            dispatched = ct_dispatched_modules(model)
            behind = f", behind compressed-tensors offload dispatch on {dispatched} modules" if dispatched else ""
            wrapped = len(ct_wrapped_modules(model))
            through = f", through compressed-tensors' forward wrapper on {wrapped} modules" if wrapped else ""
            return f"{cls} [{state}] -> torch.matmul{behind}{through}"
    return "unknown"


def ct_wrapped_modules(model) -> list[torch.nn.Module]:
    """Modules whose forward compressed-tensors replaced with its own per-call wrapper
    (``set_forward_quantized``: QDQ where still needed, and ``patch_attr(weight, "data", ...)``
    around the original forward on every call)."""
    found = []
    for module in model.modules():
        forward = module.__dict__.get("forward")
        code = getattr(getattr(forward, "__func__", forward), "__code__", None)
        # the offload dispatch replaces forwards too (counted by ct_dispatched_modules): not these
        if code is not None and "quantization/lifecycle/forward" in code.co_filename.replace("\\", "/"):
            found.append(module)
    return found


def ct_dispatched_modules(model) -> int:
    """How many modules sit behind compressed-tensors' offload dispatch (0 where the installed
    compressed-tensors has none)."""
    try:
        from compressed_tensors.offload.cache.base import OffloadCache
    except ImportError:
        return 0
    return sum(isinstance(module._parameters, OffloadCache) for module in model.modules())


@register
class CTW4A16(_CT):
    name = "ct-w4a16"
    checkpoint = "ct-w4a16"
    bits = 4
    description = "compressed-tensors W4A16 pack-quantized, loaded as transformers does by default"


@register
class CTW4A16Dequant(_CT):
    name = "ct-w4a16-dequant"
    checkpoint = "ct-w4a16"
    bits = 4
    dequantize = True
    description = "compressed-tensors W4A16 dequantized to dense at load"


@register
class CTW4A16NoDispatch(CTW4A16):
    name = "ct-w4a16-nodispatch"
    description = ("compressed-tensors W4A16 loaded as transformers does by default, with compressed-tensors' "
                   "per-module offload dispatch removed after the first forward (same dense weights)")

    def unsupported_reason(self, device):
        if importlib.util.find_spec("compressed_tensors.offload") is None:
            import compressed_tensors
            return (f"compressed-tensors {compressed_tensors.__version__} has no offload dispatch "
                    "(compressed_tensors.offload) to remove: ct-w4a16 is this path on this stack")
        return None

    def after_first_forward(self, model):
        from compressed_tensors.offload import remove_dispatch
        dispatched = ct_dispatched_modules(model)
        remove_dispatch(model, onload_tensors=True)  # tensors end on the execution device either way
        return {"ct_dispatch_removed_modules": dispatched}


@register
class CTW4A16Bare(CTW4A16NoDispatch):
    name = "ct-w4a16-bare"
    description = ("ct-w4a16-nodispatch with compressed-tensors' per-call forward wrappers removed too, where "
                   "the weights are already decompressed (the wrapper then only patches weight.data per call): "
                   "the same dense weights run as plain transformers Linear layers")

    def after_first_forward(self, model):
        facts = super().after_first_forward(model)
        from compressed_tensors.quantization import QuantizationStatus
        removed = 0
        for module in ct_wrapped_modules(model):
            # Only where the wrapper cannot change the numbers: decompressed weights, no activation quantization.
            scheme = getattr(module, "quantization_scheme", None)
            if (getattr(module, "quantization_status", None) == QuantizationStatus.DECOMPRESSED and scheme is not None
                    and not scheme.input_activations and not scheme.output_activations):
                del module.forward  # back to the class's forward
                removed += 1
        return {**facts, "ct_forward_wrappers_removed": removed}


@register
class CTW8A16(_CT):
    name = "ct-w8a16"
    checkpoint = "ct-w8a16"
    bits = 8
    description = "compressed-tensors W8A16 (int8, group 128, symmetric, pack-quantized)"


@register
class CTFP8(_CT):
    name = "ct-fp8"
    checkpoint = "ct-fp8"
    bits = 8
    description = "compressed-tensors FP8 dynamic (fp8 e4m3 per-channel weights, per-token activations)"
    # Activations are rounded to fp8 too: measured 0.997 at hidden 256, 0.9908 at the qwen2.5-3b shape.
    min_cosine = 0.985


@register
class CTW8A8(_CT):
    name = "ct-w8a8"
    checkpoint = "ct-w8a8"
    bits = 8
    description = ("compressed-tensors W8A8 int8 (per-channel weights, dynamic per-token int8 activations, "
                   "int-quantized)")
    # Activations are rounded to int8 per token too (measured: see docs/formats.md).
    min_cosine = 0.985


# ----------------------------------------------------------------------------- building
def _scheme(kind: str):
    from compressed_tensors.quantization import preset_name_to_scheme
    # int8 is stored pack-quantized too: naive-quantized int8 does not round-trip on ct 0.10.
    return {
        "ct-w4a16": (preset_name_to_scheme("W4A16", ["Linear"]), "pack-quantized"),
        "ct-w8a16": (preset_name_to_scheme("W8A16", ["Linear"]), "pack-quantized"),
        "ct-fp8": (preset_name_to_scheme("FP8_DYNAMIC", ["Linear"]), "float-quantized"),
        # int8 per-channel weights, dynamic per-token int8 activations: the int8 path engines run natively
        "ct-w8a8": (preset_name_to_scheme("W8A8", ["Linear"]), "int-quantized"),
    }[kind]


def _set_minmax_qparams(model) -> int:
    """Data-free round-to-nearest: min-max observed per group/channel/tensor, via ct's calculate_qparams."""
    from compressed_tensors.quantization.utils import calculate_qparams

    count = 0
    for module in model.modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is None or not isinstance(module, torch.nn.Linear):
            continue
        args, weight = scheme.weights, module.weight.data.float()
        if args.strategy == "group":
            grouped = weight.reshape(weight.shape[0], -1, args.group_size)
            lo, hi = grouped.amin(-1), grouped.amax(-1)
        elif args.strategy == "channel":
            lo, hi = weight.amin(1, keepdim=True), weight.amax(1, keepdim=True)
        else:
            lo, hi = weight.amin().reshape(1), weight.amax().reshape(1)
        scale, zero = calculate_qparams(lo, hi, args)
        module.weight_scale.data.copy_(scale.reshape(module.weight_scale.shape).to(module.weight_scale.dtype))
        if hasattr(module, "weight_zero_point"):
            module.weight_zero_point.data.copy_(
                zero.reshape(module.weight_zero_point.shape).to(module.weight_zero_point.dtype))
        count += 1
    return count


def _build(kind):
    def build(spec, dense_dir, out_dir, device, reference, calibration_texts):
        from compressed_tensors.compressors import ModelCompressor
        from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .reference import guard_outputs

        scheme, fmt = _scheme(kind)
        model = AutoModelForCausalLM.from_pretrained(str(dense_dir), device_map={"": str(device)},
                                                     **dtype_kwargs(torch.float16)).eval()
        apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme},
                                                            ignore=["lm_head"]))
        quantized = _set_minmax_qparams(model)
        fakequant = guard_outputs(model, reference["ids"].to(device))  # ct's own quantize-dequantize forward
        try:
            compressor = ModelCompressor.from_pretrained_model(model, quantization_format=fmt)
        except TypeError:  # compressed-tensors <= 0.11 takes sparsity_config positionally first
            compressor = ModelCompressor.from_pretrained_model(model, sparsity_config=None,
                                                               quantization_format=fmt)
        compressor.compress_model(model)
        model.save_pretrained(str(out_dir))
        compressor.update_config(str(out_dir))
        AutoTokenizer.from_pretrained(str(dense_dir)).save_pretrained(str(out_dir))
        torch.save({"ids": reference["ids"], **fakequant}, Path(out_dir) / "quantbench_fakequant.pt")
        return {"ct_format": fmt, "quantized_linears": quantized}
    return build


for _kind in ("ct-w4a16", "ct-w8a16", "ct-fp8", "ct-w8a8"):
    builder(_kind, ("compressed-tensors",))(_build(_kind))
