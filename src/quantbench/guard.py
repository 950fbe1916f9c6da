"""Correctness guard: a quantized format must reproduce the dense model's logits within a bound,
so a broken kernel can never look fast."""

from __future__ import annotations

from dataclasses import dataclass

import torch

FAKEQUANT_MIN_COSINE = 0.9995  # same quantized weights, only kernel/accumulation order differs


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a-b| relative to max |b| (scale-free, robust to near-zero elements)."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-12)).item()


@dataclass(frozen=True)
class GuardResult:
    cosine_vs_dense: float | None
    rel_err_vs_dense: float | None
    min_cosine: float
    cosine_vs_fakequant: float | None = None
    note: str = ""

    @property
    def passed(self) -> bool:
        ok = self.cosine_vs_dense is None or self.cosine_vs_dense >= self.min_cosine
        if self.cosine_vs_fakequant is not None:
            ok = ok and self.cosine_vs_fakequant >= FAKEQUANT_MIN_COSINE
        return ok

    def message(self) -> str:
        parts = []
        if self.cosine_vs_dense is not None:
            rel = f", max rel err {self.rel_err_vs_dense:.4f}" if self.rel_err_vs_dense is not None else ""
            parts.append(f"cosine vs fp32 dense {self.cosine_vs_dense:.5f} (bound >= {self.min_cosine}){rel}")
        if self.cosine_vs_fakequant is not None:
            parts.append(f"cosine vs quantizer's fake-quant {self.cosine_vs_fakequant:.6f} "
                         f"(bound >= {FAKEQUANT_MIN_COSINE})")
        if self.note:
            parts.append(self.note)
        return "; ".join(parts) or "no reference available"

    def as_dict(self) -> dict:
        return {"cosine_vs_dense": self.cosine_vs_dense, "rel_err_vs_dense": self.rel_err_vs_dense,
                "min_cosine": self.min_cosine, "cosine_vs_fakequant": self.cosine_vs_fakequant,
                "passed": self.passed, "note": self.note}


def evaluate(got: torch.Tensor, dense_ref: torch.Tensor | None, min_cosine: float,
             fakequant_ref: torch.Tensor | None = None, note: str = "") -> GuardResult:
    return GuardResult(
        cosine_vs_dense=cosine(got, dense_ref) if dense_ref is not None else None,
        rel_err_vs_dense=max_rel_err(got, dense_ref) if dense_ref is not None else None,
        min_cosine=min_cosine,
        cosine_vs_fakequant=cosine(got, fakequant_ref) if fakequant_ref is not None else None,
        note=note,
    )
