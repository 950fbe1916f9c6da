"""``<format>+compile``: any registered format, its decode step compiled over a StaticCache.

The checkpoint, load, kernel and guard are the base format's; only the decode runtime differs
(quantbench.compiled). Prefill stays eager, so the variant states its prefill cases instead of
repeating the base format's numbers under another name.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import torch

from .base import Format, variant

SUFFIX = "+compile"
# Runtimes that do not run transformers' forward over a transformers cache.
NO_STATIC_CACHE = {
    "awq-gemm-fused": "AutoAWQ's fused layers keep their own KV cache and ignore transformers' StaticCache",
}


def compiler_missing(device: torch.device) -> str | None:
    """What torch.compile's default backend (inductor) needs here and is missing, or None."""
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "torch.compile on CUDA needs Triton (inductor generates Triton kernels): pip install triton"
        return None
    compiler = os.environ.get("CXX") or "g++"
    if shutil.which(compiler) is None and shutil.which("c++") is None:
        return f"torch.compile on CPU needs a C++ compiler (inductor generates C++), none found ({compiler}, c++)"
    return None


@variant(SUFFIX)
class Compiled(Format):
    """the format's checkpoint and load, decode step compiled by torch.compile over a StaticCache (e.g. bf16+compile)."""

    def __init__(self, base: Format):
        self.base = base
        self.name = base.name + SUFFIX
        self.checkpoint = base.checkpoint
        self.runtime = f"{base.runtime} + torch.compile"
        self.bits = base.bits
        self.dtype = base.dtype
        self.description = (f"{base.description}; decode step compiled by torch.compile over a StaticCache "
                            f"(CUDA graphs on a GPU), prefill eager")

    @property
    def min_cosine(self) -> float:
        return self.base.min_cosine

    def unsupported_reason(self, device: torch.device) -> str | None:
        return (NO_STATIC_CACHE.get(self.base.name) or self.base.unsupported_reason(device)
                or compiler_missing(device))

    def unsupported_phase(self, phase: str) -> str | None:
        if phase == "prefill":
            return (f"{self.name} compiles the decode step only; prefill runs eager, as measured by "
                    f"{self.base.name}'s prefill cases")
        return self.base.unsupported_phase(phase)

    def decoder(self, model: torch.nn.Module, device: torch.device):
        from ..compiled import CompiledDecoder
        return CompiledDecoder(model, device, self.dtype)

    def load(self, ckpt_dir, device):
        return self.base.load(ckpt_dir, device)

    def kernel(self, model, device) -> str:
        return self.base.kernel(model, device)

    def after_first_forward(self, model) -> dict:
        return self.base.after_first_forward(model)

    def first_forward_facts(self, model) -> dict:
        return self.base.first_forward_facts(model)
