"""AWQ checkpoints loaded by transformers itself: on transformers 5.x through gptqmodel's kernels,
one format per kernel backend.

transformers 5.x no longer runs AWQ through AutoAWQ: its AWQ quantizer asks gptqmodel for a
``QuantLinear`` class (``hf_select_quant_linear_v2``) and puts one in place of every Linear. Which
class is a loading attribute, ``AwqConfig(backend=...)``: ``auto`` picks by device and checkpoint
format (gptqmodel's priority order), the others name one kernel. The same AutoAWQ checkpoint can so
run through Marlin, Machete (Hopper), AutoAWQ's own GEMM/GEMV CUDA kernels (gptqmodel builds them
itself, so they run where the autoawq-kernels wheel does not import), a Triton GEMM, or plain
torch. gptqmodel builds its CUDA kernels with nvcc on first use (torch's JIT extension loader,
cached under ``GPTQMODEL_TORCH_EXTENSIONS_DIR``, default ``~/.cache/gptqmodel/torch_extensions``);
selection, and with it the build, is done and timed before the load is timed (``kernel_select_s``),
and a build or selection failure is a stated ``unsupported`` in gptqmodel's words. A named backend
never falls back: the loaded model must hold that class, else the case fails.

On transformers 4.x, ``awq-gemm-hf`` runs AutoAWQ's modules through transformers (CUDA only) and
the backend formats are stated unsupported.
"""

from __future__ import annotations

import importlib.util
import os
import re
import time
import traceback

import torch

from ..errors import Unsupported, first_line
from ..offline import stay_offline
from .autoawq import read_awq_config
from .base import Format, LoadedModel, from_pretrained_strict, register

# gptqmodel's QuantLinear class -> what it does, for the kernel string (the guide prints it).
KERNEL_WORDS = {
    "TorchAtenAwqLinear": "torch int4pack_mm (ATen CPU kernel)",
    "AwqTorchLinear": "naive dequantize in torch + matmul",
    "TorchFusedAwqLinear": "torch fused dequantize+matmul",
    "AwqGEMMLinear": "AutoAWQ's GEMM CUDA kernel, built by gptqmodel",
    "AwqGEMVLinear": "AutoAWQ's GEMV CUDA kernel (GEMMV2 above 8 tokens), built by gptqmodel",
    "AwqGEMMTritonLinear": "AutoAWQ's Triton GEMM, gptqmodel's copy",
    "AwqMarlinLinear": "Marlin int4 GEMM (repacked at load)",
    "AwqMacheteLinear": "Machete (CUTLASS, Hopper; repacked at load)",
    "AwqExllamaV2Linear": "ExLlamaV2",
    # GPTQ checkpoints (quantbench.formats.gptq)
    "TorchAtenLinear": "torch int4pack_mm (ATen CPU kernel, repacked at load)",
    "TorchLinear": "naive dequantize in torch + matmul",
    "TorchFusedLinear": "torch fused dequantize+matmul",
    "TritonV2Linear": "gptqmodel's Triton GPTQ GEMM",
    "MarlinLinear": "Marlin int4 GEMM (repacked at load)",
    "ExllamaV2Linear": "ExLlamaV2 GPTQ kernel",
    "MacheteLinear": "Machete (CUTLASS, Hopper; repacked at load)",
}
# Process-wide settings gptqmodel writes into os.environ when imported (gptqmodel/models/auto.py);
# a benchmark process must not have one format's import change the allocator of the next.
_ENV_WRITTEN_ON_IMPORT = ("PYTORCH_ALLOC_CONF", "CUDA_DEVICE_ORDER")
_IMPORT_FACTS: dict = {}
# gptqmodel is imported offline (quantbench.offline): Machete's CUTLASS source is then not downloaded.
OFFLINE_ENV = "GPTQMODEL_OFFLINE"
CUTLASS_FIX = ("set GPTQMODEL_CUTLASS_DIR to a CUTLASS {version} source checkout (include/, tools/, python/), "
               "or GPTQMODEL_OFFLINE=0 to let gptqmodel download it")


def _transformers_4() -> bool:
    import transformers
    return transformers.__version__.startswith("4.")


def gptqmodel_available() -> bool:
    return importlib.util.find_spec("gptqmodel") is not None


def import_gptqmodel() -> dict:
    """Import gptqmodel once, undoing the environment variables it sets for the whole process
    (the CUDA caching allocator's config among them); returns what was undone."""
    if "gptqmodel_env_undone" not in _IMPORT_FACTS:
        _IMPORT_FACTS["gptqmodel_offline"] = stay_offline()[OFFLINE_ENV]  # also where no plugin or CLI set it
        before = {key: os.environ.get(key) for key in _ENV_WRITTEN_ON_IMPORT}
        undone = {}
        try:
            import gptqmodel  # noqa: F401
        finally:
            for key, value in before.items():
                if os.environ.get(key) != value:
                    undone[key] = os.environ.get(key)
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
        _IMPORT_FACTS["gptqmodel_env_undone"] = undone
    return dict(_IMPORT_FACTS)


def select_quant_linear(method: str, backend: str, checkpoint_format: str, device: torch.device,
                        group_size: int = 128, desc_act: bool = False, sym: bool = False) -> tuple[type, float]:
    """The QuantLinear class gptqmodel gives transformers for this method ('awq', 'gptq') and backend on
    ``device`` (the same call transformers makes), and the seconds it took: on CUDA, validating a kernel
    builds its extension, so this is where nvcc runs. Raises Unsupported with gptqmodel's reason."""
    try:
        import_gptqmodel()
    except Exception as exc:  # noqa: BLE001  any import failure (e.g. pypcre built for another system)
        raise Unsupported(f"gptqmodel does not import here: {type(exc).__name__}: {first_line(exc)}") from None
    from gptqmodel.quantization import METHOD
    from gptqmodel.utils.importer import hf_select_quant_linear_v2

    start = time.perf_counter()
    try:
        cls = hf_select_quant_linear_v2(bits=4, group_size=group_size, desc_act=desc_act, sym=sym,
                                        format=checkpoint_format, quant_method=METHOD(method),
                                        zero_point=method == "awq", backend=backend,
                                        device_map={"": str(device)}, pack=False)
    except (ValueError, ImportError, RuntimeError, NotImplementedError) as exc:
        why = first_line(exc, default=type(exc).__name__)
        cutlass = re.search(r"CUTLASS (v[\d.]+)", why)
        if cutlass and f"{OFFLINE_ENV}=1" in why:  # its message runs on with cache paths: say it, with the fix
            why = (f"its CUDA extension is built from CUTLASS {cutlass[1]} source, which is not on this machine "
                   f"and is not downloaded. Fix: {CUTLASS_FIX.format(version=cutlass[1])}")
        raise Unsupported(f"gptqmodel has no {method.upper()} kernel for backend {backend!r} ({checkpoint_format} "
                          f"checkpoint) on {device.type}: {why}") from None
    return cls, time.perf_counter() - start


_SELECTIONS: dict[tuple, tuple[type, float] | Unsupported] = {}


def selected_quant_linear(method: str, backend: str, checkpoint_format: str, device: torch.device,
                          group_size: int = 128, desc_act: bool = False, sym: bool = False) -> tuple[type, float]:
    """select_quant_linear once per arguments in this process, for the formats and the kernel suite alike:
    a selection may build a CUDA extension, and its seconds are those of the first call. Raises the
    selection's Unsupported every time."""
    key = (method, backend, checkpoint_format, str(device), group_size, desc_act, sym)
    if key not in _SELECTIONS:
        try:
            _SELECTIONS[key] = select_quant_linear(method, backend, checkpoint_format, device, group_size,
                                                   desc_act, sym)
        except Unsupported as exc:
            _SELECTIONS[key] = exc
    selected = _SELECTIONS[key]
    if isinstance(selected, Unsupported):
        raise Unsupported(str(selected))
    return selected


def selected_awq_linear(backend: str, checkpoint_format: str, device: torch.device) -> tuple[type, float]:
    """The AWQ (asymmetric, group 128) QuantLinear class for a backend: selected_quant_linear's AWQ case."""
    return selected_quant_linear("awq", backend, checkpoint_format, device)


def load_with_gptqmodel(ckpt_dir, device, dtype, backend: str, **kwargs):
    """transformers' load of a checkpoint whose kernels gptqmodel gives (AWQ, GPTQ); a refusal raised inside
    gptqmodel (it re-selects for this checkpoint's own group size and layer shapes) is this backend's
    Unsupported, in its words."""
    try:
        return from_pretrained_strict(ckpt_dir, device, dtype, **kwargs)
    except (ValueError, NotImplementedError) as exc:
        if not _raised_in_gptqmodel(exc):
            raise
        raise Unsupported(f"gptqmodel could not load {ckpt_dir} with backend {backend!r}: "
                          f"{first_line(exc, default=type(exc).__name__)}") from None


def _raised_in_gptqmodel(exc: BaseException) -> bool:
    return any(f"{os.sep}gptqmodel{os.sep}" in frame.filename for frame in traceback.extract_tb(exc.__traceback__))


def quant_linear_classes(model: torch.nn.Module) -> list[str]:
    """Names of the gptqmodel QuantLinear classes in the model (sorted, each once)."""
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear
    return sorted({type(m).__name__ for m in model.modules() if isinstance(m, BaseQuantLinear)})


class _AWQTransformers(Format):
    """An AWQ checkpoint through ``AutoModelForCausalLM.from_pretrained`` with one gptqmodel backend."""

    bits = 4
    dtype = torch.float16
    library = "transformers"
    checkpoint = "awq-gemm"
    backend = "auto"               # transformers' AwqBackend value
    checkpoint_format = "gemm"     # gptqmodel FORMAT of the checkpoint (AutoAWQ's version)

    def _legacy_reason(self, device) -> str | None:
        return ("transformers 4.x has no AWQ kernel backends (it runs AutoAWQ's modules); gptqmodel's "
                "AWQ kernels load through transformers 5.x")

    def unsupported_reason(self, device):
        if _transformers_4():
            return self._legacy_reason(device)
        if not gptqmodel_available():
            return ("transformers 5.x loads AWQ checkpoints through gptqmodel, which is not installed "
                    "(pip install gptqmodel==7.5.0; the current stack's extra has it)")
        try:
            selected_awq_linear(self.backend, self.checkpoint_format, device)
        except Unsupported as exc:
            return str(exc)
        return None

    def load(self, ckpt_dir, device):
        qc = read_awq_config(ckpt_dir)
        kwargs = {}
        if self.backend != "auto":
            from transformers import AwqConfig
            # backend is a loading attribute: transformers keeps the checkpoint's config and takes it.
            kwargs["quantization_config"] = AwqConfig(bits=4, group_size=qc.get("group_size", qc.get("q_group_size")),
                                                      zero_point=qc.get("zero_point", True),
                                                      version=self.checkpoint_format, backend=self.backend)
        return load_with_gptqmodel(ckpt_dir, device, torch.float16, self.backend, **kwargs)

    def open(self, ckpt_dir, device) -> LoadedModel:
        loaded = super().open(ckpt_dir, device)
        if _transformers_4():
            return loaded
        present = quant_linear_classes(loaded.model)
        expected, seconds = selected_awq_linear(self.backend, self.checkpoint_format, device)  # cached
        if present != [expected.__name__]:
            # A named backend must not fall back; for auto, transformers' own pick must be the one we timed.
            raise RuntimeError(f"{self.name}: gptqmodel selected {expected.__name__} for backend {self.backend!r}, "
                               f"but the loaded model holds {present}")
        loaded.facts.update(import_gptqmodel())
        loaded.facts["gptqmodel_backend"] = self.backend
        loaded.facts["kernel_select_s"] = seconds
        return loaded

    def kernel(self, model, device):
        classes = sorted({type(m).__name__ for n, m in model.named_modules() if n.endswith("q_proj")})
        if _transformers_4():
            return "transformers:" + ",".join(classes)
        from ..environment import version
        words = "; ".join(f"{c}: {KERNEL_WORDS.get(c, 'gptqmodel kernel')}" for c in classes)
        return f"gptqmodel {version('gptqmodel')} backend={self.backend} -> {words}"


@register
class AWQGemmTransformers(_AWQTransformers):
    name = "awq-gemm-hf"
    description = ("AWQ GEMM checkpoint loaded by transformers itself: gptqmodel picks the kernel on 5.x "
                   "(backend auto), AutoAWQ's modules on 4.x")

    def _legacy_reason(self, device):
        if device.type != "cuda":
            return "transformers 4.x runs AWQ through AutoAWQ, which demands IPEX on CPU"
        return None


# One format per kernel a user can name (transformers' AwqBackend values); the checkpoint is AutoAWQ's.
@register
class AWQGemmTransformersTorch(_AWQTransformers):
    name, backend = "awq-gemm-hf-torch", "torch_awq"
    description = "AWQ GEMM checkpoint, transformers + gptqmodel's torch kernel (dequantize + matmul)"


@register
class AWQGemmTransformersGemm(_AWQTransformers):
    name, backend = "awq-gemm-hf-gemm", "gemm"
    description = "AWQ GEMM checkpoint, transformers + AutoAWQ's GEMM CUDA kernel as gptqmodel builds it"


@register
class AWQGemvTransformers(_AWQTransformers):
    name, backend = "awq-gemv-hf", "gemv"
    checkpoint, checkpoint_format = "awq-gemv", "gemv"
    description = "AWQ GEMV checkpoint, transformers + AutoAWQ's GEMV CUDA kernel as gptqmodel builds it"


@register
class AWQGemmTransformersTriton(_AWQTransformers):
    name, backend = "awq-gemm-hf-triton", "gemm_triton"
    description = "AWQ GEMM checkpoint, transformers + gptqmodel's Triton AWQ GEMM"


@register
class AWQGemmTransformersMarlin(_AWQTransformers):
    name, backend = "awq-gemm-hf-marlin", "marlin"
    description = "AWQ GEMM checkpoint, transformers + gptqmodel's Marlin kernel (repacked at load)"


@register
class AWQGemmTransformersMachete(_AWQTransformers):
    name, backend = "awq-gemm-hf-machete", "machete"
    description = "AWQ GEMM checkpoint, transformers + gptqmodel's Machete kernel (Hopper, CUTLASS)"
