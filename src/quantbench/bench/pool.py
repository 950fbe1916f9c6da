"""Model sources and the one-model-at-a-time pool the benchmarks draw from.

Loading is expensive, so a loaded model is reused by every case of the same (source, format),
and dropped before the next one loads: one model resident at a time keeps memory figures honest.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import BadCheckpoint, CaseStopped, Crashed, OutOfMemory, State, Unsupported
from ..formats import LoadedModel, get_format
from ..formats.checkpoints import FAKEQUANT_FILE, REFERENCE_FILE, checkpoint_dir, detect_checkpoint, ensure_checkpoint
from ..runtimes import DEFAULT, Shapes, get_runtime
from ..specs import load_spec
from . import guard, isolation
from .budgets import Budget
from .one_at_a_time import OneAtATime

ISOLATE_CHOICES = ("auto", "all", "none")


@dataclass(frozen=True)
class ModelSource:
    """A spec name (synthetic, built on demand) or a user checkpoint directory."""

    label: str
    spec: str | None = None
    path: str | None = None

    @classmethod
    def from_spec(cls, name: str) -> ModelSource:
        load_spec(name)
        return cls(label=name, spec=name)

    @classmethod
    def from_dir(cls, path: str) -> ModelSource:
        return cls(label=f"dir:{Path(path).name}", path=str(Path(path).resolve()))

    def formats(self) -> tuple[str, ...] | None:
        """Formats a user directory can run (None for specs: every format applies)."""
        if self.path is None:
            return None
        return detect_checkpoint(self.path).formats

    def vocab_size(self) -> int:
        if self.spec:
            return load_spec(self.spec).vocab_size
        import json
        return int(json.loads((Path(self.path) / "config.json").read_text())["vocab_size"])

    def max_positions(self) -> int | None:
        """The positions the model was built for (max_position_embeddings), or None where its config names none."""
        if self.spec:
            return load_spec(self.spec).max_position_embeddings
        import json
        try:
            config = json.loads((Path(self.path) / "config.json").read_text())
        except (OSError, ValueError):
            return None  # a broken config is the checkpoint's own error, stated when it loads
        value = config.get("max_position_embeddings") if isinstance(config, dict) else None
        return int(value) if isinstance(value, int) else None

    def checkpoint(self, format_name: str, device: torch.device) -> Path:
        if self.path is not None:
            detect_checkpoint(self.path)
            return Path(self.path)
        return ensure_checkpoint(load_spec(self.spec), get_format(format_name).checkpoint, device)

    def references(self, format_name: str, ckpt: Path) -> tuple[dict | None, dict | None]:
        dense_ref = fake_ref = None
        if self.spec is not None:
            dense_ref = torch.load(checkpoint_dir(load_spec(self.spec), "dense") / REFERENCE_FILE)
        if (ckpt / FAKEQUANT_FILE).is_file():
            fake_ref = torch.load(ckpt / FAKEQUANT_FILE)
        return dense_ref, fake_ref


@dataclass
class Prepared:
    loaded: LoadedModel
    guard: guard.GuardResult
    facts: dict = field(default_factory=dict)
    decoder: object = None  # the runtime's decoder over this model (runtimes.eager.EagerDecoder, ...)

    @property
    def memory(self):
        """The peak-memory tracker of the process the model lives in (a child's, for an isolated runtime)."""
        from ..measure import PeakMemory
        return getattr(self.decoder, "memory", None) or PeakMemory(self.loaded.device)


class ModelPool:
    """``isolate``: 'auto' (each runtime's own choice: vLLM's engine in a child process), 'all' (every runtime in
    one), 'none' (everything in this process, as before isolation existed). ``budget``: the engine start's."""

    def __init__(self, device: torch.device, shapes: Shapes | None = None, isolate: str = "auto",
                 budget: Budget | None = None):
        self.device = device
        self.shapes = shapes or Shapes()
        self.isolate, self.budget = isolate, budget or Budget(float("inf"), isolation.FOREVER_S)
        self.models: OneAtATime[tuple, Prepared] = OneAtATime(self._start, _close,
                                                               remember=(CaseStopped, BadCheckpoint))
        self.too_slow: dict[tuple, list] = {}   # (source, format, runtime, phase) -> cases that passed the budget
        self.kernels: dict[tuple, object] = {}  # (source, format, runtime, rows, phase) -> KernelFields

    def get(self, source: ModelSource, format_name: str, runtime_name: str = DEFAULT) -> Prepared:
        return self.models.get((source, format_name, runtime_name))

    def _start(self, key: tuple) -> Prepared:
        try:
            return self._prepare(*key)
        except torch.cuda.OutOfMemoryError as exc:
            _free(self.device)
            raise OutOfMemory(f"CUDA out of memory while loading: {str(exc)[:200]}") from None
        except BaseException:
            _free(self.device)  # a failed load's tensors go before the next one loads
            raise

    def isolated(self, runtime) -> bool:
        return {"all": True, "none": False}.get(self.isolate, runtime.isolate)

    def case_ended(self, case, state: State | str, reason: str) -> None:
        """A case of the model in the pool ended as ``state``. crashed: its process is gone, and the cases it had
        left are stated with the crash. too-slow: the child was stopped; a later case of the same phase at a
        shape no smaller is stated without running, the others get a new one. Every state that ends a process
        (oom too) drops the model."""
        key, state = (case.source, case.format, case.runtime), State(state)
        held = self.models.holds(key)  # fail() below releases it: the release here still frees its memory
        if state is State.CRASHED and held:
            self.models.fail(key, Crashed(f"not run: the process running {case.format} on {case.runtime} died in "
                                          f"{case.id}: {reason}"))
        if state is State.TOO_SLOW:
            self.too_slow.setdefault((*key, case.phase), []).append(case)
        if state.ends_process and held:
            self.release()

    def kernel_fields(self, case, prepared: Prepared):
        """The kernel fields at the case's own shape (bench.kernel_fields), observed once per shape outside the
        timed rounds; stated not observed where the model is not an in-process eager module."""
        from . import kernel_fields
        rows = kernel_fields.case_rows(case.batch, case.prompt_len, case.phase)
        key = (case.source, case.format, case.runtime, rows, case.phase)
        if key not in self.kernels:
            kernel, model = prepared.loaded.facts.get("kernel"), prepared.loaded.model
            what = f"{'prefill' if case.phase == 'prefill' else 'decode step'}, batch {case.batch}"
            if not isinstance(model, torch.nn.Module) or self.isolated(get_runtime(case.runtime)):
                found = kernel_fields.not_observed("the model runs inside an engine (vLLM's, in this process or "
                                                   "its own); its facts name the kernels it selected", kernel)
            elif "compile" in case.runtime:
                found = kernel_fields.not_observed("a compiled graph runs inductor's kernels, which an eager call "
                                                   "would not name", kernel)
            else:
                found = kernel_fields.observe(model, self.device, rows, what, kernel)
            self.kernels[key] = found
        return self.kernels[key]

    def slower_case(self, case):
        """A case of the same checkpoint, runtime and phase, at a batch and prompt no larger, that passed its
        budget already: this one would too."""
        passed = self.too_slow.get((case.source, case.format, case.runtime, case.phase), [])
        return next((c for c in passed if c.batch <= case.batch and c.prompt_len <= case.prompt_len), None)

    def release(self) -> None:
        self.models.release()
        _free(self.device)

    def _prepare(self, source: ModelSource, format_name: str, runtime_name: str) -> Prepared:
        fmt, runtime = get_format(format_name), get_runtime(runtime_name)
        allowed = source.formats()
        if allowed is not None and format_name not in allowed:
            raise Unsupported(f"{source.path} holds a {detect_checkpoint(source.path).kind} checkpoint; "
                              f"{format_name} does not run it (use {', '.join(allowed)})")
        reason = runtime.why_not(fmt, self.device)
        if reason:
            raise Unsupported(reason)
        ckpt = source.checkpoint(format_name, self.device)
        if self.device.type == "cuda":  # a build on the device left cached blocks: vLLM's start would see them used
            gc.collect()
            torch.cuda.empty_cache()
        dense_ref, fake_ref = source.references(format_name, ckpt)
        ids = (dense_ref or fake_ref or {}).get("ids")
        if ids is None:
            from ..formats.checkpoints import reference_ids
            ids = reference_ids(source.vocab_size())
        if self.isolated(runtime):
            opened = isolation.open_isolated(runtime, fmt, ckpt, self.device, ids, self.shapes,
                                             self.budget.engine_start_s)
        else:
            opened = runtime.open(fmt, ckpt, self.device, ids, self.shapes)
        got = opened.outputs
        note = "" if dense_ref is not None else "user checkpoint: no dense reference, kernel checked for finite output"
        result = guard.evaluate_outputs(got, dense_ref, fmt.min_cosine, fake_ref, note=note,
                                        dense_weights=fmt.bits is None)
        if not _finite(got):  # NaN never passes
            result = guard.GuardResult(float("nan"), None, fmt.min_cosine, None, "non-finite outputs")
        return Prepared(opened.loaded, result, facts={"checkpoint": str(ckpt)}, decoder=opened.decoder)


def _close(prepared: Prepared) -> None:
    if hasattr(prepared.decoder, "close"):
        prepared.decoder.close()  # a compiled runtime drops its graphs; an isolated one ends its child


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _finite(outputs: dict) -> bool:
    """No NaN or inf in what the guard compares; in a runtime's logprobs NaN marks an entry it did not
    return (beyond its top K), so there only inf counts, and some entry must be there."""
    logits, hidden = outputs["logits"], outputs["hidden"]
    if outputs.get("logprobs"):
        ok = not torch.isinf(logits).any() and not torch.isnan(logits).all()
    else:
        ok = bool(torch.isfinite(logits).all())
    return ok and (hidden is None or bool(torch.isfinite(hidden).all()))
