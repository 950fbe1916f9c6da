"""The format interface and the registry every format module adds itself to.

A *checkpoint kind* is what lies on disk (dense, awq-gemm, ct-w4a16, ...); a *format* is a
checkpoint kind loaded by one library (awq-gemm through AutoAWQ's modules, awq-gemm-fused through
AutoAWQ's fused layers, ...). Several formats can share one checkpoint kind. What then executes the
loaded model (eager, compiled, ...) is the runtime axis: quantbench.runtimes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import BadCheckpoint, QuantbenchError
from ..measure import current_bytes, resident_weight_bytes, synchronize
from ..registry import parse_names

FORMATS: dict[str, Format] = {}
BUILDERS: dict[str, Callable] = {}
# checkpoint kind -> the libraries (distribution names) whose versions its builder's output depends on
BUILDER_LIBRARIES: dict[str, tuple[str, ...]] = {}
# config.json quant_method -> detect(config_path, quantization_config) -> checkpoint kind; each format
# family declares the method it reads (``@detects``), so --model-dir detection has no list of its own.
DETECTORS: dict[str, Callable] = {}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    format: str
    library: str
    device: torch.device
    dtype: torch.dtype
    load_s: float
    facts: dict = field(default_factory=dict)


class Format:
    """One way of running one checkpoint kind. Subclasses set the class attributes and load()."""

    name: str = ""
    checkpoint: str = ""          # checkpoint kind on disk
    library: str = ""             # which library loads it
    # Why a runtime that brings its own KV cache (a StaticCache) cannot run this format, or None.
    own_kv_cache: str | None = None
    bits: int | None = None       # weight bits; None = 16-bit dense (so: not quantized)
    display_order: int = 99       # position in the guide's tables and its color (set by @register)
    dtype: torch.dtype = torch.float16
    description: str = ""

    @property
    def min_cosine(self) -> float:
        """Guard bound on the hidden state after layer 2 vs the fp32 dense model. Measured on random
        weights: int4 round-to-nearest 0.966-0.975 at hidden 256, 0.922 (ct symmetric) and 0.935
        (AWQ asymmetric) at the qwen2.5-3b shape; int8 0.9999; bf16 0.99997. The bounds sit under
        the measured values with room for other shapes, and far above what a broken kernel gives."""
        if self.bits is None:
            return 0.999
        return 0.90 if self.bits <= 4 else 0.995

    def unsupported_reason(self, device: torch.device) -> str | None:
        """Why this format cannot run on ``device`` here, or None. Checked before loading."""
        return None

    def load(self, ckpt_dir: Path, device: torch.device) -> torch.nn.Module:
        raise NotImplementedError

    def kernel(self, model: torch.nn.Module, device: torch.device) -> str:
        """Name of the code path that multiplies by the weights (the thing a slow fallback hides in)."""
        return "torch.matmul"

    def unsupported_phase(self, phase: str) -> str | None:
        """Why this format does not measure ``phase`` (prefill/decode), or None."""
        return None

    def after_first_forward(self, model: torch.nn.Module) -> dict:
        """A runtime step that needs the first forward done (e.g. undo what a library installed
        during it); returns facts to record. Runs after the guard's forward, before any timing."""
        return {}

    def first_forward_facts(self, model: torch.nn.Module) -> dict:
        """Format-specific facts read after the first forward (e.g. still packed or not)."""
        return {}

    def open(self, ckpt_dir: Path, device: torch.device) -> LoadedModel:
        """Load, timed, with resident bytes after load; the first forward is run by the caller."""
        reason = self.unsupported_reason(device)
        if reason:
            from ..errors import Unsupported
            raise Unsupported(reason)
        synchronize(device)
        start = time.perf_counter()
        model = self.load(Path(ckpt_dir), device)
        model.eval()
        synchronize(device)
        load_s = time.perf_counter() - start
        facts = {
            "kernel": self.kernel(model, device),
            "linear_classes": linear_classes(model),
            "weight_bytes_after_load": resident_weight_bytes(model)["total"],
            "device_bytes_after_load": current_bytes(device),
            "disk_bytes": disk_bytes(ckpt_dir),
        }
        return LoadedModel(model, self.name, self.library, device, self.dtype, load_s, facts)

    def record_fields(self) -> dict:
        """What every case of this format records about it (measured or stated): the guide reads
        whether it is quantized and where it sorts from here, not from a list of names."""
        return {"bits": self.bits, "display_order": self.display_order}

    def describe(self) -> dict:
        return {"name": self.name, "checkpoint": self.checkpoint, "library": self.library,
                "display_order": self.display_order,
                "bits": self.bits, "dtype": str(self.dtype).replace("torch.", ""),
                "min_cosine": self.min_cosine, "description": self.description}


def register(cls):
    """Class decorator: adds one instance to FORMATS under its name; registry order is display order."""
    instance = cls()
    if instance.name in FORMATS:
        raise RuntimeError(f"format {instance.name!r} registered twice")
    instance.display_order = len(FORMATS)
    FORMATS[instance.name] = instance
    return cls


def detects(quant_method: str):
    """Function decorator: reads a checkpoint whose config.json names this quant_method."""
    def wrap(fn):
        DETECTORS[quant_method] = fn
        return fn
    return wrap


def builder(checkpoint: str, libraries: tuple[str, ...] = ()):
    """Function decorator: the function that writes a checkpoint of this kind from the dense model;
    ``libraries`` (beside transformers) are those whose versions key its cached output."""
    def wrap(fn):
        BUILDERS[checkpoint] = fn
        BUILDER_LIBRARIES[checkpoint] = tuple(libraries)
        return fn
    return wrap


def get_format(name: str) -> Format:
    if name in FORMATS:
        return FORMATS[name]
    raise QuantbenchError(None, f"unknown format {name!r}", f"use one of: {', '.join(FORMATS)} (or 'all')")


def parse_formats(text: str) -> list[str]:
    """A comma list of names, where 'all' stands for every registered format in registry order
    -> validated names, each once."""
    return parse_names(text, FORMATS, get_format)


def dtype_kwargs(dtype) -> dict:
    """transformers 5 renamed torch_dtype to dtype; 4.x only knows torch_dtype."""
    import transformers
    return {"dtype": dtype} if int(transformers.__version__.split(".")[0]) >= 5 else {"torch_dtype": dtype}


def from_pretrained_strict(ckpt_dir: Path, device: torch.device, dtype, **kwargs):
    """AutoModelForCausalLM.from_pretrained, safetensors only, failing on missing/unexpected keys
    (a broken checkpoint otherwise loads with warnings and random weights)."""
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(
        str(ckpt_dir), device_map={"": str(device)}, use_safetensors=True, trust_remote_code=False,
        output_loading_info=True, **dtype_kwargs(dtype), **kwargs)
    check_loading_info(ckpt_dir, info)
    return model


IGNORABLE_MISSING = ("rotary_emb.inv_freq", "lm_head.weight")


def check_loading_info(ckpt_dir, info: dict) -> None:
    missing = [k for k in info.get("missing_keys", []) if not k.endswith(IGNORABLE_MISSING)]
    unexpected = list(info.get("unexpected_keys", []))
    mismatched = list(info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        raise BadCheckpoint(ckpt_dir, f"weights do not match the model: missing {missing[:4]}, "
                            f"unexpected {unexpected[:4]}, "
                            f"mismatched {[m[0] if isinstance(m, tuple) else m for m in mismatched[:4]]}",
                            "rebuild the checkpoint, or check that config.json belongs to these weights")


def linear_classes(model: torch.nn.Module) -> dict[str, int]:
    """Count the module classes that sit where the decoder's projections are."""
    counts: dict[str, int] = {}
    for name, module in model.named_modules():
        if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                          "qkv_proj", "gate_up_proj")):
            key = type(module).__name__
            counts[key] = counts.get(key, 0) + 1
    return counts


def disk_bytes(ckpt_dir) -> int:
    return sum(p.stat().st_size for p in Path(ckpt_dir).rglob("*") if p.is_file())


# Profiler event names of the calls that multiply by a weight (torch's own and libraries' custom ops).
_WEIGHT_OP_WORDS = ("mm", "matmul", "linear", "int4pack", "gemv", "gemm", "dequant", "quant")


@torch.no_grad()
def projection_ops(model: torch.nn.Module, device: torch.device, rows: int = 1) -> dict[str, int]:
    """What one call of the first q_proj dispatched to: the torch ops (ATen, and custom ones such as
    ``bitsandbytes::gemv_4bit``) whose names say they multiply or (de)quantize, with their counts, read
    by torch's profiler. A tensor-subclass weight (torchao) or a library's Linear names no kernel of its
    own; this is the kernel that ran at ``rows`` tokens."""
    from torch.profiler import ProfilerActivity, profile

    module = next((m for n, m in model.named_modules() if n.endswith("q_proj")), None)
    if module is None:
        return {}
    in_features = getattr(module, "in_features", None) or module.weight.shape[-1]
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float16)
    x = torch.randn(rows, in_features, dtype=dtype, device=device)
    module(x)  # a first call may repack (ATen int4pack): not the op we want named
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        module(x)
    ops: dict[str, int] = {}
    for event in prof.events():
        if any(word in event.name.lower() for word in _WEIGHT_OP_WORDS):
            ops[event.name] = ops.get(event.name, 0) + 1
    return ops


def ops_words(ops: dict[str, int]) -> str:
    """'aten::linear, aten::_int_mm' from projection_ops, in the order they first ran (outermost first)."""
    return ", ".join(ops) if ops else "no weight op seen"
