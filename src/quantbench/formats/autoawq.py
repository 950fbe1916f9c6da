"""AutoAWQ 4-bit formats, run through AutoAWQ's own WQLinear_* modules.

AutoAWQ's ``from_quantized`` forces IPEX on CPU (unusable beside torch 2.13), so the model is
built from its config and AutoAWQ's ``WQLinear_GEMM``/``WQLinear_GEMV`` modules are swapped in
with AutoAWQ's own helpers, then the safetensors are loaded strictly. The module's forward is
AutoAWQ's, so the kernel it picks (awq_ext, Triton or the naive dequantize+matmul) is the one a
user gets; ``kernel()`` names it.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import torch

from ..errors import BadCheckpoint
from .base import Format, builder, check_loading_info, detects, dtype_kwargs, register

AWQ_GROUP_SIZES = (32, 64, 128)


def _gemm_module():
    from awq.modules.linear import gemm
    return gemm


def _awq_ext():
    return _gemm_module().awq_ext


def route_gemm_for(device: torch.device) -> str:
    """Which path WQLinear_GEMM takes on ``device``; on CPU, Triton is switched off first.

    AutoAWQ tries Triton whenever it imports, and Triton kernels fail on CPU tensors, so on a
    CPU-only machine with Triton installed the naive path must be chosen explicitly.
    """
    gemm = _gemm_module()
    if device.type != "cuda":
        gemm.TRITON_AVAILABLE = False
        return "naive-dequant"
    if gemm.awq_ext is not None:
        return "awq_ext.gemm_forward_cuda (dequantize+matmul when tokens >= 1024)"
    if gemm.TRITON_AVAILABLE:
        return "triton.awq_gemm (dequantize+matmul when tokens >= 1024)"
    return "naive-dequant"


def read_awq_config(ckpt_dir: Path) -> dict:
    config = json.loads((Path(ckpt_dir) / "config.json").read_text())
    qc = dict(config.get("quantization_config") or {})
    group = qc.get("group_size", qc.get("q_group_size"))
    if group not in AWQ_GROUP_SIZES:
        raise BadCheckpoint(Path(ckpt_dir) / "config.json", f"unsupported AWQ group_size {group}",
                            f"AutoAWQ kernels take group_size in {AWQ_GROUP_SIZES}; re-quantize with one")
    if qc.get("bits", qc.get("w_bit", 4)) != 4:
        raise BadCheckpoint(Path(ckpt_dir) / "config.json", f"unsupported AWQ bits {qc.get('bits')}",
                            "AutoAWQ 0.2.9 runs 4-bit weights only")
    return qc


def _no_init():
    """Skip random init of weights that the checkpoint overwrites (both transformers majors)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


def load_with_wqlinear(ckpt_dir: Path, device: torch.device, version: str) -> torch.nn.Module:
    from awq.modules.linear import WQLinear_GEMM, WQLinear_GEMV
    from awq.utils.module import exclude_layers_to_not_quantize, get_named_linears, set_op_by_name
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    qc = read_awq_config(ckpt_dir)
    config = AutoConfig.from_pretrained(str(ckpt_dir))
    del config.quantization_config  # a plain skeleton; the quantized modules are put in below
    with torch.device(device), _no_init():
        model = AutoModelForCausalLM.from_config(config, **dtype_kwargs(torch.float16))
    wqlinear = {"gemm": WQLinear_GEMM, "gemv": WQLinear_GEMV}[version]
    for layer in model.model.layers:
        linears = exclude_layers_to_not_quantize(get_named_linears(layer), qc.get("modules_to_not_convert"))
        for name, linear in linears.items():
            set_op_by_name(layer, name, wqlinear.from_linear(linear, 4, qc["group_size"], init_only=True))
    state = {}
    for shard in sorted(Path(ckpt_dir).glob("*.safetensors")):
        state.update(load_file(str(shard), device=str(device)))
    if config.tie_word_embeddings and "model.embed_tokens.weight" not in state and "lm_head.weight" in state:
        # AutoAWQ's save_quantized keeps only one name of the tied pair: here the lm_head's.
        state["model.embed_tokens.weight"] = state.pop("lm_head.weight")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if config.tie_word_embeddings:
        model.tie_weights()
    check_loading_info(ckpt_dir, {"missing_keys": missing, "unexpected_keys": unexpected})
    return model


class _AWQ(Format):
    bits = 4
    dtype = torch.float16
    version = "gemm"
    library = "autoawq"

    def load(self, ckpt_dir, device):
        return load_with_wqlinear(ckpt_dir, device, self.version)


@register
class AWQGemm(_AWQ):
    name = "awq-gemm"
    checkpoint = "awq-gemm"
    description = "AutoAWQ int4 GEMM (WQLinear_GEMM)"

    def kernel(self, model, device):
        return route_gemm_for(device)


@register
class AWQGemv(_AWQ):
    name = "awq-gemv"
    checkpoint = "awq-gemv"
    version = "gemv"
    description = "AutoAWQ int4 GEMV (WQLinear_GEMV, batch-1 kernel)"

    def unsupported_reason(self, device):
        if device.type != "cuda":
            return "WQLinear_GEMV has no CPU path: it needs AutoAWQ's awq_ext CUDA extension"
        if _awq_ext() is None:
            return ("WQLinear_GEMV needs AutoAWQ's awq_ext CUDA extension (autoawq-kernels), "
                    "which does not import here")
        return None

    def kernel(self, model, device):
        return "awq_ext.gemv_forward_cuda"


@register
class AWQGemmFused(_AWQ):
    name = "awq-gemm-fused"
    checkpoint = "awq-gemm"
    library = "autoawq-fused"
    own_kv_cache = "AutoAWQ's fused layers keep their own KV cache and ignore transformers' StaticCache"
    description = "AutoAWQ int4 GEMM with fused attention/MLP/norm (from_quantized(fuse_layers=True))"

    def unsupported_reason(self, device):
        if device.type != "cuda":
            return "AutoAWQ fused layers run only on CUDA (from_quantized demands IPEX on CPU)"
        if _awq_ext() is None:
            return ("AutoAWQ fused layers need the awq_ext CUDA extension (fused RMSNorm/MLP kernels), "
                    "which does not import here")
        return None

    def load(self, ckpt_dir, device):
        from awq import AutoAWQForCausalLM

        read_awq_config(ckpt_dir)
        wrapper = AutoAWQForCausalLM.from_quantized(str(ckpt_dir), fuse_layers=True,
                                                    device_map={"": str(device)})
        return wrapper.model

    def kernel(self, model, device):
        return "awq_ext fused (gemm_forward_cuda + fused attention/norm)"


@detects("awq")
def awq_kind(config_path: Path, qc: dict) -> str:
    """An AutoAWQ checkpoint: awq-gemm or awq-gemv, by its version."""
    read_awq_config(config_path.parent)
    version = str(qc.get("version", "gemm")).lower()
    if version not in ("gemm", "gemv"):
        raise BadCheckpoint(config_path, f"unsupported AWQ version {version!r}",
                            "quantbench runs AWQ 'gemm' and 'gemv' checkpoints")
    return f"awq-{version}"


# ----------------------------------------------------------------------------- building
AWQ_QUANT_CONFIG = {"zero_point": True, "q_group_size": 128, "w_bit": 4}


def _build_calibrated(version: str, dense_dir: Path, out_dir: Path, spec, calibration_texts, reference) -> dict:
    """AutoAWQ's own quantize(): activation-aware scales from locally generated calibration text; its
    fake-quant reference from the weights AutoAWQ packed and the norms its scale search changed."""
    from awq import AutoAWQForCausalLM
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(dense_dir))
    wrapper = AutoAWQForCausalLM.from_pretrained(str(dense_dir), device_map="cpu")
    # AutoAWQ drops samples longer than max_calib_seq_len and splits the rest into blocks of it.
    with _packed_weights_recorded() as packed:
        wrapper.quantize(tokenizer, quant_config={**AWQ_QUANT_CONFIG, "version": version.upper()},
                         calib_data=calibration_texts, n_parallel_calib_samples=8,
                         max_calib_samples=len(calibration_texts), max_calib_seq_len=64)
    fakequant = _calibrated_fakequant(wrapper.model, packed, dense_dir, reference)
    wrapper.save_quantized(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    torch.save({"ids": reference["ids"], **fakequant}, out_dir / "quantbench_fakequant.pt")
    return {"awq_method": "calibrate", "calibration_samples": len(calibration_texts)}


@contextlib.contextmanager
def _packed_weights_recorded():
    """While AutoAWQ quantizes: each WQLinear it packs -> the fake-quantized weight it packed (AutoAWQ sets
    ``linear.weight`` to pseudo_quantize_tensor's output before ``from_linear``), fp32 [out, in]."""
    from awq.modules.linear import WQLinear_GEMM, WQLinear_GEMV
    packed: dict = {}
    saved = {cls: cls.__dict__["from_linear"] for cls in (WQLinear_GEMM, WQLinear_GEMV)}

    def recording(original):
        def from_linear(cls, linear, *args, **kwargs):
            module = original.__func__(cls, linear, *args, **kwargs)
            packed[module] = linear.weight.detach().float().cpu().clone()
            return module
        return classmethod(from_linear)
    try:
        for cls, original in saved.items():
            cls.from_linear = recording(original)
        yield packed
    finally:
        for cls, original in saved.items():
            cls.from_linear = original


def _calibrated_fakequant(quantized, packed: dict, dense_dir: Path, reference) -> dict:
    """The guard's outputs of the dense architecture in fp32 holding what AutoAWQ's quantize left: its packed
    weights as it fake-quantized them and every other tensor (the norms its scales were folded into)."""
    from .reference import dequantized_reference
    weights = {name: packed[module] for name, module in quantized.named_modules() if module in packed}
    others = {name: tensor for name, tensor in quantized.state_dict().items()
              if name.rsplit(".", 1)[-1] not in ("qweight", "qzeros", "scales")}
    return dequantized_reference(dense_dir, weights, reference["ids"], "cpu", others=others)


def _build_rtn(version: str, dense_dir: Path, out_dir: Path, spec, device, reference) -> dict:
    """Fast path for big shapes: round-to-nearest min-max (AutoAWQ's pseudo_quantize_tensor) packed
    by AutoAWQ's own WQLinear_*.from_linear: the same on-disk format as quantize(), no calibration."""
    from awq.models._config import AwqConfig
    from awq.modules.linear import WQLinear_GEMM, WQLinear_GEMV
    from awq.quantize.quantizer import AwqQuantizer
    from awq.utils.module import get_named_linears, set_op_by_name
    from huggingface_hub import save_torch_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .reference import guard_outputs

    qparams = SimpleNamespace(group_size=128, w_bit=4, zero_point=True)
    model = AutoModelForCausalLM.from_pretrained(str(dense_dir), device_map={"": str(device)},
                                                 **dtype_kwargs(torch.float16)).eval()
    packed = {}
    with torch.no_grad():
        for index, layer in enumerate(model.model.layers):
            for name, linear in get_named_linears(layer).items():
                fake, scales, zeros = AwqQuantizer.pseudo_quantize_tensor(qparams, linear.weight.data)
                linear.weight.data = fake  # fake-quantized weights give the exact reference below
                packed[(index, name)] = (scales, zeros)
        fakequant = guard_outputs(model, reference["ids"].to(device))
        wqlinear = {"gemm": WQLinear_GEMM, "gemv": WQLinear_GEMV}[version]
        for index, layer in enumerate(model.model.layers):
            for name, linear in get_named_linears(layer).items():
                scales, zeros = packed[(index, name)]
                if version == "gemm":  # WQLinear_GEMM takes [groups, out]; GEMV takes [out, groups]
                    scales, zeros = scales.t().contiguous(), zeros.t().contiguous()
                set_op_by_name(layer, name, wqlinear.from_linear(linear, 4, 128, scales=scales, zeros=zeros))
    quant_config = AwqConfig.from_dict({**AWQ_QUANT_CONFIG, "version": version.upper()})
    model.config.quantization_config = quant_config.to_transformers_dict()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(str(out_dir))
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        # Tied: save the embedding under its own name, as transformers does (huggingface_hub would
        # keep only one name of a shared tensor, and not necessarily this one).
        state.pop("lm_head.weight", None)
    save_torch_state_dict(state, str(out_dir))
    AutoTokenizer.from_pretrained(str(dense_dir)).save_pretrained(str(out_dir))
    torch.save({"ids": reference["ids"], **fakequant}, out_dir / "quantbench_fakequant.pt")
    return {"awq_method": "rtn"}


def _build(version):
    def build(spec, dense_dir, out_dir, device, reference, calibration_texts):
        if spec.awq_method == "calibrate":
            return _build_calibrated(version, dense_dir, out_dir, spec, calibration_texts, reference)
        return _build_rtn(version, dense_dir, out_dir, spec, device, reference)
    return build


builder("awq-gemm", ("autoawq",))(_build("gemm"))
builder("awq-gemv", ("autoawq",))(_build("gemv"))
