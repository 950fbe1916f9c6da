"""The compiled runtime: a static KV cache and one torch.compile'd decode step (after gpt-fast).

Eager decode at small batch on a GPU measures Python launching kernels more than the format; a
compiled step (CUDA graphs on a GPU) takes the host out. What the compiler did is recorded per case
(graphs, graph breaks with where and why, CUDA graph skips): a graph break is the silent slow path
this suite exists to expose. Before timing, one compiled step is checked against an eager step at
the same cache state. Figures: docs/formats-and-runtimes.md.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import logging
import os
import re
import shutil
import time

import torch

from ..errors import Unsupported, first_line
from ..measure import synchronize
from .base import DEFAULT, register
from .eager import Transformers

COMPILE_MIN_COSINE = 0.999  # compiled vs eager last-token logits of one decode step, same cache state
RECOMPILE_LIMIT = 256  # one entry per (model, batch, cache length); the default (8) would silently fall back


class CompileMismatch(Exception):
    """The compiled step's logits disagree with the eager step's: the compiled path is wrong."""


def static_cache(model, batch: int, max_len: int, device, dtype):
    """transformers' StaticCache on either stack (4.x takes batch/device/dtype, 5.x sizes itself lazily)."""
    from transformers import StaticCache
    if "max_batch_size" in inspect.signature(StaticCache.__init__).parameters:
        return StaticCache(config=model.config, max_batch_size=batch, max_cache_len=max_len, device=device, dtype=dtype)
    return StaticCache(config=model.config, max_cache_len=max_len)


def _counters() -> dict:
    from torch._dynamo.utils import counters
    return {"graphs": counters["stats"].get("unique_graphs", 0), "breaks": dict(counters["graph_break"]),
            "cudagraph_skips": counters["inductor"].get("cudagraph_skips", 0)}


def compile_report(before: dict, after: dict) -> dict:
    """What one compilation did, from dynamo's counters before and after it (pure)."""
    breaks = {reason: n - before["breaks"].get(reason, 0) for reason, n in after["breaks"].items()}
    breaks = {reason: n for reason, n in breaks.items() if n > 0}
    top = max(breaks, key=breaks.get) if breaks else None
    return {"compile_graphs": after["graphs"] - before["graphs"],
            "compile_graph_breaks": sum(breaks.values()),
            # dynamo's reasons are paragraphs; the first line names the construct it could not trace
            "compile_break_reason": top.strip().splitlines()[0][:160] if top else None,
            "cudagraph_skips": after["cudagraph_skips"] - before["cudagraph_skips"]}


BREAK_AT = re.compile(r"in user code at (\S+?):(\d+)")


def break_location(message: str) -> str | None:
    """'Graph break in user code at /x/site-packages/lib/mod.py:362 ...' -> 'lib/mod.py:362' (pure)."""
    found = BREAK_AT.search(message)
    if not found:
        return None
    path = found.group(1).replace("\\", "/")
    for marker in ("site-packages/", "dist-packages/", "src/"):
        if marker in path:
            path = path.split(marker)[-1]
            break
    return f"{path}:{found.group(2)}"


class CompilerLog(logging.Handler):
    """What dynamo and inductor log while compiling that their counters do not hold: where each graph
    break happened, and why a CUDA graph was skipped."""

    def __init__(self):
        super().__init__()
        self.break_locations: list[str] = []
        self.cudagraph_skips: list[str] = []

    def emit(self, record):
        message = record.getMessage()
        if record.name.endswith("__graph_breaks"):
            where = break_location(message)
            if where:
                self.break_locations.append(where)
        elif "skipping cudagraphs" in message:
            self.cudagraph_skips.append(message.strip().splitlines()[0][:200])

    def facts(self) -> dict:
        where = self.break_locations
        return {"compile_break_at": max(set(where), key=where.count) if where else None,
                "cudagraph_skip_reason": self.cudagraph_skips[0] if self.cudagraph_skips else None}


@contextlib.contextmanager
def _compiler_log():
    """Listen to dynamo's graph_breaks and inductor's cudagraphs logs for one compilation. Leaves a
    user's own TORCH_LOGS setting alone."""
    with contextlib.suppress(ImportError):  # the modules that own those loggers
        import torch._dynamo.symbolic_convert
        import torch._inductor.cudagraph_utils
    handler = CompilerLog()
    configured = bool(os.environ.get("TORCH_LOGS"))
    if not configured:
        torch._logging.set_logs(graph_breaks=True, cudagraphs=True)
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name.endswith(("__graph_breaks", "__cudagraphs"))]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        if not configured:
            torch._logging.set_logs()


@contextlib.contextmanager
def _compile_limits():
    """Many shapes of one step recompile it; past dynamo's limit it would run eager without a word."""
    config = torch._dynamo.config
    wanted = {"recompile_limit": RECOMPILE_LIMIT, "cache_size_limit": RECOMPILE_LIMIT,
              "fail_on_recompile_limit_hit": True, "fail_on_cache_limit_hit": True}
    with config.patch(**{k: v for k, v in wanted.items() if k in config._config}):
        yield


class CompiledDecoder:
    """Greedy decode through a compiled one-token step over a StaticCache; prefill runs eager."""

    def __init__(self, model, device, dtype):
        self.model, self.device, self.dtype = model, torch.device(device), dtype
        self.mode = "reduce-overhead" if self.device.type == "cuda" else "default"
        self.step = torch.compile(self._step, mode=self.mode, fullgraph=False, dynamic=False)
        # The current shape's StaticCache, reused across its rounds (CUDA graphs need fixed addresses); one at a
        # time: a cache per shape seen would hold ~48 GiB of KV over the nightly matrix for mistral-7b, and the
        # out-of-memory states would be the harness's, recorded as the format's.
        self.caches: dict[tuple[int, int], object] = {}
        self.facts: dict[tuple[int, int], dict] = {}

    def close(self) -> None:
        """Forget this model's graphs: dynamo keeps compiled code on ``_step``'s code object, shared by
        every decoder, so without a reset the graphs of every model a run released would pile up (and
        count toward the recompile limit), with their CUDA graph pools."""
        self.caches.clear()
        self.facts.clear()
        self.step = None
        torch._dynamo.reset()

    def _step(self, token, cache, position):
        out = self.model(input_ids=token, past_key_values=cache, cache_position=position, use_cache=True,
                         logits_to_keep=1)
        logits = out.logits[:, -1]
        return logits.argmax(dim=-1, keepdim=True), logits

    def _prefill(self, cache, ids):
        cache.reset()
        positions = torch.arange(ids.shape[1], device=self.device)
        out = self.model(input_ids=ids, past_key_values=cache, cache_position=positions, use_cache=True,
                         logits_to_keep=1)
        return out.logits[:, -1].argmax(dim=-1, keepdim=True)

    def _mark_step(self):
        if self.device.type == "cuda":  # outputs of the previous replay may be overwritten from here on
            torch.compiler.cudagraph_mark_step_begin()

    @torch.no_grad()
    def prepare(self, ids: torch.Tensor, new_tokens: int) -> dict:
        """Compile the step for this (batch, cache length), check it against eager, return the facts.
        Raises Unsupported when torch.compile fails, CompileMismatch when its output is wrong."""
        batch, prompt = ids.shape
        key = (batch, prompt + new_tokens)
        if key in self.facts:
            if key not in self.caches:  # a shape compiled earlier, its cache dropped for another's
                self._keep_only(key)
                self.caches[key] = self._warm_cache(ids, new_tokens)
            return self.facts[key]
        self._keep_only(key)
        cache = static_cache(self.model, batch, prompt + new_tokens, self.device, self.dtype)
        token = self._prefill(cache, ids)
        position = torch.tensor([prompt], device=self.device)
        _, eager_logits = self._step(token, cache, position)  # the eager reference
        eager_logits = eager_logits.float().clone()
        # Prefill again: the cache counts the tokens it holds, so stepping twice at one position would
        # not be the same state (measured: an extra empty slot in attention moves the logits to cosine 0.996).
        token = self._prefill(cache, ids)
        before = _counters()
        synchronize(self.device)
        start = time.perf_counter()
        try:
            with _compile_limits(), _compiler_log() as compiler_log:
                self._mark_step()
                _, logits = self.step(token, cache, position)
                logits = logits.float().clone()
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - any compiler failure is this case's stated reason
            raise Unsupported(f"torch.compile failed on this model: {type(exc).__name__}: "
                              f"{first_line(exc, 200)}") from None
        synchronize(self.device)
        facts = {"decode_runtime": f"torch.compile(mode={self.mode}) + StaticCache",
                 "compile_s": time.perf_counter() - start, **compile_report(before, _counters()),
                 **compiler_log.facts()}
        cosine = (torch.nn.functional.cosine_similarity(logits.flatten(), eager_logits.flatten(), dim=0).item()
                  if logits.shape == eager_logits.shape else float("nan"))
        facts["compile_cosine"] = cosine
        if not cosine >= COMPILE_MIN_COSINE:  # NaN fails too
            raise CompileMismatch(f"compiled decode step disagrees with eager: logits cosine {cosine:.6f} "
                                  f"< {COMPILE_MIN_COSINE}")
        if facts["compile_graphs"] == 0:
            raise Unsupported("torch.compile produced no graph for the decode step: it would run eager")
        self.caches[key], self.facts[key] = cache, facts
        return facts

    def _keep_only(self, key) -> None:
        """Drop every StaticCache but ``key``'s, and hand their memory back to the device."""
        for other in [k for k in self.caches if k != key]:
            del self.caches[other]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _warm_cache(self, ids: torch.Tensor, new_tokens: int):
        """A new StaticCache for a shape already compiled, stepped once untimed: a CUDA graph recorded over the old
        cache's addresses records again here, not in a timed round."""
        batch, prompt = ids.shape
        cache = static_cache(self.model, batch, prompt + new_tokens, self.device, self.dtype)
        token = self._prefill(cache, ids)
        with _compile_limits():
            self._mark_step()
            self.step(token, cache, torch.tensor([prompt], device=self.device))
        synchronize(self.device)
        return cache

    @torch.no_grad()
    def start(self, ids: torch.Tensor, new_tokens: int):
        batch, prompt = ids.shape
        cache = self.caches[(batch, prompt + new_tokens)]
        token = self._prefill(cache, ids)
        return cache, token, torch.tensor([prompt], device=self.device)

    @torch.no_grad()
    def decode(self, state, n: int, timer=None) -> torch.Tensor:
        cache, token, position = state
        tokens = []
        if timer is not None:
            timer.mark()
        for _ in range(n):
            self._mark_step()
            token, _ = self.step(token, cache, position)
            token = token.clone()  # a CUDA graph's output buffer is overwritten by its next replay
            position.add_(1)
            tokens.append(token)
            if timer is not None:
                timer.mark()
        return torch.cat(tokens, dim=1)


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


@register
class TransformersCompiled(Transformers):
    name = "transformers+compile"
    format_suffix = "+compile"
    description = ("the format's load, decode step compiled by torch.compile over a StaticCache (CUDA graphs on a "
                   "GPU), prefill eager")

    def unsupported_reason(self, fmt, device) -> str | None:
        return fmt.own_kv_cache or compiler_missing(device)

    def unsupported_phase(self, fmt, phase: str) -> str | None:
        if phase == "prefill":
            return (f"{fmt.name} on {self.name} compiles the decode step only; prefill runs eager, as measured "
                    f"by {fmt.name} on {DEFAULT}")
        return None

    def decoder(self, model, device, dtype):
        return CompiledDecoder(model, device, dtype)
