"""The kernel a case ran, as fields, observed at the case's own shape.

A library picks its kernel per call: bitsandbytes takes ``gemv_4bit`` for a single row and dequantizes the whole
weight otherwise, AutoAWQ's GEMV switches above 8 rows, oneDNN picks an implementation per primitive and shape (its
scalar ``ref`` one included). So the load-time string of one batch-1 call is not what a batch-4 decode or a prefill
ran. Here one call of the first q_proj at the case's own token count (batch for a decode step, batch x prompt for a
prefill), outside the timed rounds and cached per shape, is read by torch's profiler (the weight ops) and oneDNN's
verbose log (the GEMM implementations), and declared as fields that findings and the gate read; the prose kernel
string stays for display.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import dispatch


@dataclass(frozen=True)
class KernelFields:
    observed_at: str                 # "q_proj, 4 rows (decode step, batch 4)"; or why it was not observed
    ops: tuple[str, ...] = ()        # the weight ops torch's profiler saw, outermost first
    onednn: tuple[str, ...] = ()     # the GEMM implementations oneDNN ran (CPU)
    naive_gemm: bool | None = None   # oneDNN ran its reference (ref) GEMM; None where nothing was observed
    dequantizes: bool | None = None  # a dequantize op rebuilt the weight in the call; None where not observed
    chosen_by: str | None = None     # "named backend" (the format names it) or "library" (the library chose)

    def record(self) -> dict:
        return {"kernel_observed_at": self.observed_at, "kernel_ops": list(self.ops),
                "kernel_onednn": list(self.onednn), "kernel_naive_gemm": self.naive_gemm,
                "kernel_dequantizes": self.dequantizes, "kernel_chosen_by": self.chosen_by}


def case_rows(batch: int, prompt_len: int, phase: str) -> int:
    """Tokens one projection call sees in the case: batch x prompt for a prefill, batch for a decode step."""
    return batch * prompt_len if phase == "prefill" else batch


def observe(model, device, rows: int, what: str, kernel: str | None) -> KernelFields:
    """One call of the first q_proj at ``rows`` tokens, its weight ops and oneDNN GEMMs. ``what`` says which
    case shape the rows stand for."""
    from ..formats.base import projection_ops
    seen: dict = {}

    def call():
        seen.update(projection_ops(model, device, rows=rows))
    primitives = dispatch.onednn_primitives(call) if device.type == "cpu" else (call() or {})
    gemms = tuple(sorted(p for p in primitives if p.split(" ")[0] in dispatch.GEMM_PRIMITIVES))
    if not seen and not gemms:
        return KernelFields(f"not observed: no q_proj at {rows} rows ({what})", chosen_by=dispatch.chosen_by(kernel))
    return KernelFields(f"q_proj, {rows} rows ({what})", tuple(seen), gemms,
                        bool(dispatch.naive_primitives(primitives)) if device.type == "cpu" else None,
                        # a dequantize op at this shape, or a path whose dequantize is plain torch code the profiler
                        # names only as its pieces (AutoAWQ's and gptqmodel's naive paths say so in their string)
                        any("dequantize" in op.lower() for op in seen) or "naive" in dispatch.library_words(kernel),
                        dispatch.chosen_by(kernel))


def not_observed(why: str, kernel: str | None) -> KernelFields:
    return KernelFields(f"not observed: {why}", chosen_by=dispatch.chosen_by(kernel))
