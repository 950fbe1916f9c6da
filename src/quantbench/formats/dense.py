"""Dense baselines: the fp16 checkpoint run in bf16 or fp16 by plain transformers."""

from __future__ import annotations

from pathlib import Path

import torch

from .base import Format, from_pretrained_strict, register


class _Dense(Format):
    checkpoint = "dense"
    library = "transformers"

    def load(self, ckpt_dir: Path, device: torch.device):
        return from_pretrained_strict(ckpt_dir, device, self.dtype)

    def kernel(self, model, device) -> str:
        return f"torch.matmul[{str(self.dtype).replace('torch.', '')}]"


@register
class BF16(_Dense):
    name = "bf16"
    dtype = torch.bfloat16
    description = "dense bfloat16 (the baseline every speedup is measured against)"


@register
class FP16(_Dense):
    name = "fp16"
    dtype = torch.float16
    description = "dense float16"
