"""bitsandbytes checkpoints (what QLoRA users deploy): nf4 with and without double quantization, and
LLM.int8, loaded by transformers with bitsandbytes' own Linear4bit / Linear8bitLt and kernels.

A serialized bitsandbytes checkpoint is what ``save_pretrained`` writes from a model loaded with
``BitsAndBytesConfig``: config.json says ``"quant_method": "bitsandbytes"`` and the weights hold the
packed 4-bit (or int8) tensors with their quantization state. Which kernel bitsandbytes runs depends on
the device and, on a CPU, on the CPU: its 4-bit matmul (``bitsandbytes::gemv_4bit``) has a CPU kernel
only where the CPU has AVX-512 BF16 (elsewhere it dequantizes and multiplies), and it first tries to
fetch a faster one from the Hugging Face hub (``kernels-community``), which quantbench never lets it
download. The kernel string names the ops that ran, read by torch's profiler.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from ..errors import BadCheckpoint, Unsupported
from .base import Format, builder, detects, dtype_kwargs, from_pretrained_strict, ops_words, projection_ops, register

# checkpoint kind -> the BitsAndBytesConfig arguments that make it
KIND_CONFIGS = {
    "bnb-nf4": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": False,
                "bnb_4bit_compute_dtype": "bfloat16"},
    "bnb-nf4-dq": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                   "bnb_4bit_compute_dtype": "bfloat16"},
    "bnb-int8": {"load_in_8bit": True},
}


@detects("bitsandbytes")
def bnb_kind(config_path: Path, qc: dict) -> str:
    """nf4 (double quantized or not) or LLM.int8, by the config's flags."""
    if qc.get("load_in_8bit") or qc.get("_load_in_8bit"):
        return "bnb-int8"
    if not (qc.get("load_in_4bit") or qc.get("_load_in_4bit")):
        raise BadCheckpoint(config_path, "bitsandbytes quantization_config sets neither load_in_4bit nor load_in_8bit",
                            "re-save the model loaded with BitsAndBytesConfig(load_in_4bit=True) or load_in_8bit")
    if qc.get("bnb_4bit_quant_type", "fp4") != "nf4":
        raise BadCheckpoint(config_path, f"unsupported bitsandbytes 4-bit type {qc.get('bnb_4bit_quant_type')!r}",
                            "quantbench runs nf4 (bnb_4bit_quant_type='nf4'); re-quantize with it")
    return "bnb-nf4-dq" if qc.get("bnb_4bit_use_double_quant") else "bnb-nf4"


def bnb_missing(device: torch.device) -> str | None:
    """Why bitsandbytes cannot run here, or None."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (pip install bitsandbytes==0.50.2; the current stack's extra has it)"
    import transformers
    if transformers.__version__.startswith("4.") and device.type != "cuda":
        return "transformers 4.x runs bitsandbytes on CUDA only (its CPU backend needs transformers 5.x)"
    if device.type == "cpu" and importlib.util.find_spec("bitsandbytes.backends.cpu") is None:
        import bitsandbytes
        return f"bitsandbytes {bitsandbytes.__version__} has no CPU backend (0.46 and newer have one)"
    return None


class _BNB(Format):
    library = "transformers+bitsandbytes"

    def unsupported_reason(self, device):
        return bnb_missing(device)

    def load(self, ckpt_dir, device):
        return from_pretrained_strict(ckpt_dir, device, self.dtype)

    def kernel(self, model, device):
        from ..environment import version
        proj = next(m for n, m in model.named_modules() if n.endswith("q_proj"))
        kind = getattr(getattr(proj.weight, "quant_state", None), "quant_type", None) or "int8"
        ops = projection_ops(model, device)
        # Without its fused 4-bit kernel for this device (on a CPU: AVX-512 BF16) bitsandbytes dequantizes
        # the whole weight on every call: the findings' naive fallback.
        naive = "naive dequantize + matmul: " if any(op.endswith("dequantize_4bit") for op in ops) else ""
        return f"bitsandbytes {version('bitsandbytes')} {type(proj).__name__} [{kind}] -> {naive}{ops_words(ops)}"


@register
class BNBNF4(_BNB):
    name = checkpoint = "bnb-nf4"
    bits = 4
    dtype = torch.bfloat16
    description = "bitsandbytes nf4 (block 64, fp32 absmax), bf16 compute, transformers' Linear4bit"


@register
class BNBNF4DQ(_BNB):
    name = checkpoint = "bnb-nf4-dq"
    bits = 4
    dtype = torch.bfloat16
    description = "bitsandbytes nf4 with double quantization (the absmax quantized to 8 bits too), bf16 compute"


@register
class BNBInt8(_BNB):
    name = checkpoint = "bnb-int8"
    bits = 8
    dtype = torch.float16
    description = "bitsandbytes LLM.int8 (int8 weights and activations, fp16 outlier columns above 6.0)"
    # Activations are rounded to int8 per row too (outside the outlier columns), as for ct-w8a8.
    min_cosine = 0.985


# ----------------------------------------------------------------------------- building
def dequantized_weights(model) -> dict[str, torch.Tensor]:
    """Each bitsandbytes Linear's weight as bitsandbytes dequantizes it, [out, in] fp32."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    weights = {}
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weights[name] = dequantize_4bit(module.weight.data, module.weight.quant_state).float()
        elif isinstance(module, bnb.nn.Linear8bitLt):
            state = module.state
            cb, scb = (state.CB, state.SCB) if state.CB is not None else (module.weight.data, module.weight.SCB)
            weights[name] = cb.float() * scb.float().unsqueeze(1) / 127.0
    return weights


def _build(kind: str):
    def build(spec, dense_dir, out_dir, device, reference, calibration_texts):
        missing = bnb_missing(device)
        if missing:
            raise Unsupported(missing)
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

        from .reference import dequantized_reference
        args = dict(KIND_CONFIGS[kind])
        compute = getattr(torch, args.pop("bnb_4bit_compute_dtype", "float16"))
        model = AutoModelForCausalLM.from_pretrained(
            str(dense_dir), device_map={"": str(device)},
            quantization_config=BitsAndBytesConfig(**args, bnb_4bit_compute_dtype=compute),
            **dtype_kwargs(compute)).eval()
        weights = dequantized_weights(model)
        model.save_pretrained(str(out_dir), safe_serialization=True)
        AutoTokenizer.from_pretrained(str(dense_dir)).save_pretrained(str(out_dir))
        fakequant = dequantized_reference(dense_dir, weights, reference["ids"], device)
        torch.save({"ids": reference["ids"], **fakequant}, Path(out_dir) / "quantbench_fakequant.pt")
        saved = json.loads((Path(out_dir) / "config.json").read_text())["quantization_config"]
        return {"bnb_config": {k: v for k, v in saved.items() if not k.startswith("_")},
                "quantized_linears": len(weights)}
    return build


for _kind in KIND_CONFIGS:
    builder(_kind, ("bitsandbytes",))(_build(_kind))
