"""Correctness guard: a quantized format must reproduce the dense model's outputs within a bound,
so a broken kernel can never look fast.

What is compared is the hidden state after the first few decoder layers when the references hold
it (see formats.reference.guard_outputs for why not the logits of a deep random model), else the logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Same quantized weights, only the kernel and the arithmetic differ. On CPU the match is exact
# (1.000000); on an H100 the library's own fake-quant forward runs in fp16 and differs from the
# packed kernels by 0.998 (ct int4), 0.99999 (AutoAWQ GEMM on Triton) and 0.996 (ct fp8 with
# dynamic per-token activations) at layer 2. A wrong packing order, scale or zero point lands
# far below (cosine ~0.5-0.9), so this bound separates a broken kernel from rounding.
FAKEQUANT_MIN_COSINE = 0.995


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
    compared: str = "logits"
    logits_cosine_vs_dense: float | None = None  # recorded for the reader, not bounded
    fakequant_min_cosine: float = FAKEQUANT_MIN_COSINE

    @property
    def passed(self) -> bool:
        ok = self.cosine_vs_dense is None or self.cosine_vs_dense >= self.min_cosine
        if self.cosine_vs_fakequant is not None:
            ok = ok and self.cosine_vs_fakequant >= self.fakequant_min_cosine
        return ok

    def message(self) -> str:
        parts = []
        if self.cosine_vs_dense is not None:
            rel = f", max rel err {self.rel_err_vs_dense:.4f}" if self.rel_err_vs_dense is not None else ""
            parts.append(f"{self.compared}: cosine vs fp32 dense {self.cosine_vs_dense:.5f} "
                         f"(bound >= {self.min_cosine}){rel}")
        if self.cosine_vs_fakequant is not None:
            parts.append(f"cosine vs quantizer's fake-quant {self.cosine_vs_fakequant:.6f} "
                         f"(bound >= {self.fakequant_min_cosine})")
        if self.note:
            parts.append(self.note)
        return "; ".join(parts) or "no reference available"

    def as_dict(self) -> dict:
        return {"cosine_vs_dense": self.cosine_vs_dense, "rel_err_vs_dense": self.rel_err_vs_dense,
                "min_cosine": self.min_cosine, "cosine_vs_fakequant": self.cosine_vs_fakequant,
                "passed": self.passed, "note": self.note, "compared": self.compared,
                "logits_cosine_vs_dense": self.logits_cosine_vs_dense,
                "fakequant_min_cosine": self.fakequant_min_cosine}


def evaluate(got: torch.Tensor, dense_ref: torch.Tensor | None, min_cosine: float,
             fakequant_ref: torch.Tensor | None = None, note: str = "") -> GuardResult:
    return GuardResult(
        cosine_vs_dense=cosine(got, dense_ref) if dense_ref is not None else None,
        rel_err_vs_dense=max_rel_err(got, dense_ref) if dense_ref is not None else None,
        min_cosine=min_cosine,
        cosine_vs_fakequant=cosine(got, fakequant_ref) if fakequant_ref is not None else None,
        note=note,
    )


def logprob_pair(got: torch.Tensor, ref_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A runtime's next-token logprobs (NaN where it returned none) against a reference's logits, on the
    entries it returned, each row centered: softmax ignores a row's shift, so a logprob and a logit compare
    alike once centered."""
    mask = ~torch.isnan(got)
    ref = torch.log_softmax(ref_logits.double(), dim=-1)
    count = mask.sum(dim=-1, keepdim=True).clamp(min=1)
    centered = [torch.where(mask, t - torch.where(mask, t, 0).sum(dim=-1, keepdim=True) / count, 0)
                for t in (got.double(), ref)]
    return centered[0], centered[1]


def _pair(got: dict, ref: dict | None):
    if ref is None:
        return None
    if got.get("logprobs"):
        return (*logprob_pair(got["logits"], ref["logits"]), "next-token logprobs (centered)")
    both_hidden = got.get("hidden") is not None and ref.get("hidden") is not None
    if both_hidden and ref.get("hidden_layer") == got["hidden_layer"]:
        return got["hidden"], ref["hidden"], f"hidden state after layer {got['hidden_layer']}"
    return got["logits"], ref["logits"], "logits"


def evaluate_outputs(got: dict, dense_ref: dict | None, min_cosine: float, fakequant_ref: dict | None = None,
                     note: str = "") -> GuardResult:
    """``evaluate`` on formats.reference.guard_outputs dicts: hidden states where both sides hold them."""
    dense, fake = _pair(got, dense_ref), _pair(got, fakequant_ref)
    # Logprobs come from an engine with its own kernels for every op, activations included (vLLM's
    # dynamic int8 W8A8: cosine 0.9956 vs the fake-quant forward on the tiny model), so there the
    # format's own bound applies to both references.
    fake_bound = min(FAKEQUANT_MIN_COSINE, min_cosine) if got.get("logprobs") else FAKEQUANT_MIN_COSINE
    return GuardResult(
        cosine_vs_dense=cosine(dense[0], dense[1]) if dense else None,
        rel_err_vs_dense=max_rel_err(dense[0], dense[1]) if dense else None,
        min_cosine=min_cosine,
        cosine_vs_fakequant=cosine(fake[0], fake[1]) if fake else None,
        note=note,
        compared=(dense or fake or (None, None, "logits"))[2],
        logits_cosine_vs_dense=(cosine(*logprob_pair(got["logits"], dense_ref["logits"])) if got.get("logprobs")
                                else cosine(got["logits"], dense_ref["logits"])) if dense_ref else None,
        fakequant_min_cosine=fake_bound,
    )
