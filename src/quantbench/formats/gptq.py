"""GPTQ checkpoints (the format most 4-bit models are downloaded in), loaded by transformers through
optimum and gptqmodel, one format per gptqmodel kernel backend.

transformers 5.x loads a checkpoint whose config.json says ``"quant_method": "gptq"`` with optimum's
GPTQ quantizer, which asks gptqmodel for a ``QuantLinear`` class: ``GPTQConfig(backend=...)`` names one
(torch, torch_fused, triton, marlin, exllama_v2, machete), ``auto`` lets gptqmodel pick by device and
checkpoint (on a CPU its ATen ``_weight_int4pack_mm_for_cpu`` kernel). As for the AWQ formats
(quantbench.formats.gptqmodel), the class is selected before the load is timed, a backend gptqmodel
has no kernel for here is stated in its words, and a named backend never falls back.

The builder quantizes with gptqmodel's own GPTQ (``GPTQModel.load(...).quantize(...)``) on the spec's
fixed random calibration sequences: calibrated GPTQ, not round-to-nearest. ``desc_act`` (act-order)
checkpoints are their own kind: their ``g_idx`` is a permutation, which some kernels cannot take.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import torch

from ..errors import BadCheckpoint, Unsupported
from .base import Format, LoadedModel, builder, detects, register
from .gptqmodel import (
    KERNEL_WORDS,
    gptqmodel_available,
    import_gptqmodel,
    load_with_gptqmodel,
    quant_linear_classes,
    selected_quant_linear,
)

GPTQ_GROUP_SIZES = (-1, 32, 64, 128)
CALIBRATION_SAMPLES = 64  # the spec's fixed random sequences (formats.checkpoints.calibration_texts)


def read_gptq_config(ckpt_dir: Path) -> dict:
    path = Path(ckpt_dir) / "config.json"
    qc = dict(json.loads(path.read_text()).get("quantization_config") or {})
    if qc.get("bits") != 4:
        raise BadCheckpoint(path, f"unsupported GPTQ bits {qc.get('bits')}",
                            "quantbench runs 4-bit GPTQ checkpoints; re-quantize with bits=4")
    if qc.get("group_size", 128) not in GPTQ_GROUP_SIZES:
        raise BadCheckpoint(path, f"unsupported GPTQ group_size {qc.get('group_size')}",
                            f"use group_size in {GPTQ_GROUP_SIZES}")
    fmt = qc.get("checkpoint_format", qc.get("format", "gptq"))
    if fmt not in ("gptq", "gptq_v2"):
        raise BadCheckpoint(path, f"unsupported GPTQ checkpoint_format {fmt!r}",
                            "quantbench runs gptq and gptq_v2 checkpoints (gptqmodel's save)")
    return {**qc, "checkpoint_format": fmt}


@detects("gptq")
def gptq_kind(config_path: Path, qc: dict) -> str:
    """A GPTQ checkpoint: act-order (desc_act) ones are their own kind."""
    qc = read_gptq_config(config_path.parent)
    return "gptq-desc-act" if qc.get("desc_act") else "gptq"


def _transformers_4() -> bool:
    import transformers
    return transformers.__version__.startswith("4.")


def _missing_library() -> str | None:
    import importlib.util
    if _transformers_4():
        return "transformers 4.x loads GPTQ through optimum and auto-gptq, which this stack does not install"
    for module, package in (("gptqmodel", "gptqmodel==7.5.0"), ("optimum", "optimum==2.3.0")):
        if importlib.util.find_spec(module) is None:
            return (f"transformers loads GPTQ checkpoints through optimum and gptqmodel; {module} is not installed "
                    f"(pip install {package}; the current stack's extra has it)")
    return None


class _GPTQ(Format):
    """A GPTQ checkpoint through ``AutoModelForCausalLM.from_pretrained`` with one gptqmodel backend."""

    bits = 4
    dtype = torch.float16
    library = "transformers+gptqmodel"
    checkpoint = "gptq"
    backend = "auto"  # GPTQConfig(backend=...), the value gptqmodel's selection takes
    desc_act = False  # what this kind's checkpoints hold (the user's own config decides at load)

    def _selection(self, device, qc: dict | None = None):
        qc = qc or {"group_size": 128, "desc_act": self.desc_act, "sym": True, "checkpoint_format": "gptq"}
        return selected_quant_linear("gptq", self.backend, qc["checkpoint_format"], device,
                                     qc.get("group_size", 128), bool(qc.get("desc_act")), bool(qc.get("sym", True)))

    def unsupported_reason(self, device):
        missing = _missing_library()
        if missing:
            return missing
        try:
            self._selection(device)
        except Unsupported as exc:
            return str(exc)
        return None

    def load(self, ckpt_dir, device):
        qc = read_gptq_config(ckpt_dir)
        self._selection(device, qc)  # this checkpoint's own group size and act order
        kwargs = {}
        if self.backend != "auto":
            from transformers import GPTQConfig
            # backend is a loading attribute: the checkpoint's config stays, the kernel is the one named
            kwargs["quantization_config"] = GPTQConfig(bits=4, backend=self.backend)
        return load_with_gptqmodel(ckpt_dir, device, self.dtype, self.backend, **kwargs)

    def open(self, ckpt_dir, device) -> LoadedModel:
        loaded = super().open(ckpt_dir, device)
        present = quant_linear_classes(loaded.model)
        expected, seconds = self._selection(device, read_gptq_config(ckpt_dir))  # cached
        if present != [expected.__name__]:
            raise RuntimeError(f"{self.name}: gptqmodel selected {expected.__name__} for backend {self.backend!r}, "
                               f"but the loaded model holds {present}")
        loaded.facts.update(import_gptqmodel())
        loaded.facts.update({"gptqmodel_backend": self.backend, "kernel_select_s": seconds})
        return loaded

    def kernel(self, model, device):
        from ..environment import version
        classes = sorted({type(m).__name__ for n, m in model.named_modules() if n.endswith("q_proj")})
        words = "; ".join(f"{c}: {KERNEL_WORDS.get(c, 'gptqmodel kernel')}" for c in classes)
        return f"gptqmodel {version('gptqmodel')} GPTQ backend={self.backend} -> {words}"


@register
class GPTQAuto(_GPTQ):
    name = "gptq"
    description = "GPTQ int4 (group 128, sym), transformers + optimum + gptqmodel, which picks the kernel (auto)"


@register
class GPTQTorch(_GPTQ):
    name, backend = "gptq-torch", "torch"
    description = "GPTQ int4, gptqmodel's torch kernel (dequantize + matmul every call)"


@register
class GPTQTorchFused(_GPTQ):
    name, backend = "gptq-torch-fused", "torch_fused"
    description = "GPTQ int4, gptqmodel's fused torch kernel"


@register
class GPTQTriton(_GPTQ):
    name, backend = "gptq-triton", "triton"
    description = "GPTQ int4, gptqmodel's Triton GEMM"


@register
class GPTQMarlin(_GPTQ):
    name, backend = "gptq-marlin", "marlin"
    description = "GPTQ int4, gptqmodel's Marlin kernel (repacked at load; Ampere and newer)"


@register
class GPTQExllamaV2(_GPTQ):
    name, backend = "gptq-exllamav2", "exllama_v2"
    description = "GPTQ int4, the ExLlamaV2 kernel as gptqmodel builds it"


@register
class GPTQMachete(_GPTQ):
    name, backend = "gptq-machete", "machete"
    description = "GPTQ int4, gptqmodel's Machete kernel (Hopper, CUTLASS)"


@register
class GPTQDescAct(_GPTQ):
    name, checkpoint, desc_act = "gptq-desc-act", "gptq-desc-act", True
    description = "GPTQ int4 with act-order (desc_act: permuted g_idx), gptqmodel picks the kernel (auto)"


# ----------------------------------------------------------------------------- building
def unpack_gptq_weight(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
                       checkpoint_format: str = "gptq") -> torch.Tensor:
    """A GPTQ Linear's weight as [out, in] fp32, from its stored tensors: qweight [in/8, out] and qzeros
    [groups, out/8] hold 8 int4 per int32 (low bits first), scales [groups, out], g_idx [in] the group of
    each input row. gptq (v1) stores each zero point minus one, gptq_v2 as is. Pure; no kernel involved."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    q = ((qweight.unsqueeze(1) >> shifts.view(1, -1, 1)) & 0xF).reshape(-1, qweight.shape[1])  # [in, out]
    z = ((qzeros.unsqueeze(2) >> shifts.view(1, 1, -1)) & 0xF).reshape(qzeros.shape[0], -1)     # [groups, out]
    z = z + (1 if checkpoint_format == "gptq" else 0)
    g = g_idx.long()
    return ((q - z[g]).float() * scales.float()[g]).t().contiguous()


def gptq_reference_weights(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """Every quantized Linear of a saved GPTQ checkpoint, unpacked by unpack_gptq_weight."""
    from safetensors.torch import load_file

    fmt = read_gptq_config(ckpt_dir).get("checkpoint_format", "gptq")
    tensors = {}
    for shard in sorted(Path(ckpt_dir).glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    return {name[: -len(".qweight")]: unpack_gptq_weight(tensors[name], tensors[name[:-7] + "qzeros"],
                                                         tensors[name[:-7] + "scales"], tensors[name[:-7] + "g_idx"],
                                                         fmt)
            for name in tensors if name.endswith(".qweight")}


def _gptqmodel_workers() -> None:
    """gptqmodel's quantizer splits the CPU worker pool: with its default of (cores + 1) // 2 workers a
    2-core machine has 1, and its model loader asks for 2 ("Virtual pool 'model_loader:cpu' requests 2
    workers but parent 'cpu' only has 1"). Its own setting, where the user gave none."""
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, ((os.cpu_count() or 1) + 1) // 2)))


def _build(desc_act: bool):
    def build(spec, dense_dir, out_dir, device, reference, calibration_texts):
        missing = _missing_library()
        if missing:
            raise Unsupported(missing)
        if not gptqmodel_available():
            raise Unsupported("gptqmodel is not installed")
        _gptqmodel_workers()
        import_gptqmodel()
        from gptqmodel import GPTQModel, QuantizeConfig
        from transformers import AutoTokenizer

        from .reference import dequantized_reference

        config = QuantizeConfig(bits=4, group_size=128, desc_act=desc_act, sym=True, offload_to_disk=False)
        # gptqmodel writes its quantization log into ./logs: a scratch folder, not the user's working tree
        with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
            model = GPTQModel.load(str(Path(dense_dir).resolve()), config, device=str(device))
            model.quantize(calibration_texts[:CALIBRATION_SAMPLES], batch_size=4)
            model.save(str(Path(out_dir).resolve()))
        AutoTokenizer.from_pretrained(str(dense_dir)).save_pretrained(str(out_dir))
        for scratch in ("quant_log.csv",):
            (Path(out_dir) / scratch).unlink(missing_ok=True)
        weights = gptq_reference_weights(Path(out_dir))
        fakequant = dequantized_reference(dense_dir, weights, reference["ids"], device)
        torch.save({"ids": reference["ids"], **fakequant}, Path(out_dir) / "quantbench_fakequant.pt")
        return {"gptq_method": f"calibrated GPTQ (gptqmodel), {CALIBRATION_SAMPLES} fixed random sequences",
                "desc_act": desc_act, "quantized_linears": len(weights)}
    return build


builder("gptq", ("gptqmodel",))(_build(desc_act=False))
builder("gptq-desc-act", ("gptqmodel",))(_build(desc_act=True))
