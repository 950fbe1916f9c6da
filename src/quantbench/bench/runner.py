"""Runs one benchmark case through pytest-benchmark and explains the result in extra_info."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..environment import stack_versions
from ..errors import BadCheckpoint, CaseStopped, QuantbenchError, State, first_line, stopped
from ..formats import get_format
from ..history import record
from ..measure import PeakMemory, round_clock, step_timer, stretch, synchronize
from ..runtimes import get_runtime
from ..runtimes.compiled import CompileMismatch
from .budgets import Budget, CaseClock
from .cases import Case
from .pool import ModelPool
from .prompts import prompt_ids
from .states import StateRecorder, record_and_end


@dataclass
class RunOptions:
    device: torch.device
    rounds: int
    warmup_rounds: int = 1
    kernel_rounds: int = 5
    inject_slowdown: float = 0.0  # test-only: stretch every timed region by this fraction
    budget: Budget | None = None  # None: no time budget (a case runs as long as it takes)


def percentiles(values_s: list[float]) -> dict:
    if not values_s:
        return {}
    arr = np.asarray(values_s)
    return {f"p{q}": float(np.percentile(arr, q)) for q in (50, 90, 99)}


def run_case(benchmark, case: Case, pool: ModelPool, options: RunOptions, states: StateRecorder,
             nodeid: str = "") -> dict:
    """Prepare the case (load, guard, compile at this shape), time it, describe the result."""
    prepared = None
    try:
        with host_oom_is_a_state(case):
            prepared, ids, runtime_facts, clock = prepare(case, pool, options)
            step_times, peak = time_case(benchmark, case, prepared, ids, options, clock)
        _end_case(prepared)
        if benchmark.stats is None:  # --benchmark-disable: the case ran once as a smoke test, no numbers
            return {}
        try:  # the case's facts, read from a child process too: a stated end, never a raw error
            info = describe(case, prepared, options, peak, step_times, benchmark.stats.stats.median,
                            runtime_facts)
        except CaseStopped as exc:
            raise stopped(exc.state, f"after its rounds, reading its facts: {exc.reason}", clock.kernel,
                          exc.fail) from None
    except CaseStopped as exc:
        pool.case_ended(case, exc.state, exc.reason)
        record_and_end(states, case, exc, nodeid)
    finally:
        _end_case(prepared)
    benchmark.extra_info.update(info)
    return info


FACTS_S = 60.0  # reading a finished case's facts from its child process
# torch's CPU allocator's words when the host cannot hold what a case asks for (--qb-batch 1000000000 on a CPU)
_HOST_OOM = "can't allocate memory"


@contextlib.contextmanager
def host_oom_is_a_state(case: Case):
    """A host allocation that fails is the case's ``oom`` state, as CUDA's out-of-memory is, never a traceback."""
    try:
        yield
    except RuntimeError as exc:
        if _HOST_OOM not in str(exc):
            raise
        raise CaseStopped(State.OOM,
                          f"the host could not allocate what {case.id} needs: {first_line(exc, 200)}") from None


def _end_case(prepared) -> None:
    """A decoder in a child process: the case's deadline ends with its rounds (bench.isolation.RemoteDecoder)."""
    if prepared is not None and hasattr(prepared.decoder, "end_case"):
        prepared.decoder.end_case(FACTS_S)


def prepare(case: Case, pool: ModelPool, options: RunOptions):
    """The loaded, guarded model, the prompt, what the runtime did at this shape before timing, and the
    case's clock against its budget (started once the model is loaded: an engine's start has its own)."""
    if case.error is not None:
        raise CaseStopped(State.INVALID_INPUT, case.error)
    reason = get_runtime(case.runtime).why_not_phase(get_format(case.format), case.phase)
    if reason:
        raise CaseStopped(State.UNSUPPORTED, reason)
    positions = case.source.max_positions()
    if positions and case.prompt_len + case.new_tokens > positions:  # T08: measured past what the model knows
        raise CaseStopped(State.INVALID_INPUT,
                          f"{case.id}: a {case.prompt_len}-token prompt and {case.new_tokens} new tokens "
                          f"need {case.prompt_len + case.new_tokens} positions; {case.source.label} has "
                          f"{positions} (max_position_embeddings). Fix: lower --qb-prompt or --qb-new-tokens")
    slower = pool.slower_case(case)
    if slower is not None:
        raise CaseStopped(State.TOO_SLOW, f"not run: {slower.id} passed its time budget at a shape no larger")
    try:
        prepared = pool.get(case.source, case.format, case.runtime)
    except QuantbenchError as exc:  # includes BadCheckpoint
        raise CaseStopped(State.INVALID_INPUT, exc.line()) from None
    if not prepared.guard.passed:
        raise CaseStopped(State.GUARD_FAILED, f"correctness guard failed for {case.format}: {prepared.guard.message()}")
    ids = prompt_ids(case.batch, case.prompt_len, case.source.vocab_size(), options.device)
    observed = pool.kernel_fields(case, prepared).record()  # at this case's shape, before its clock starts
    kernel = prepared.loaded.facts.get("kernel")
    budget_s = options.budget.case_s if options.budget else float("inf")
    clock = CaseClock(budget_s, case.phase, options.rounds, options.warmup_rounds, case.batch, kernel)
    if hasattr(prepared.decoder, "begin_case"):  # a decoder in a child process: every call has a deadline
        prepared.decoder.begin_case(clock, options.inject_slowdown)
    if case.phase != "decode":
        return prepared, ids, observed, clock
    try:  # a compiled runtime compiles and checks itself at this exact shape here, before any timing
        return prepared, ids, {**observed, **prepared.decoder.prepare(ids, case.new_tokens)}, clock
    except torch.cuda.OutOfMemoryError as exc:
        raise CaseStopped(State.OOM, f"CUDA out of memory while compiling: {str(exc)[:200]}") from None
    except CaseStopped as exc:
        raise stopped(exc.state, exc.reason, exc.kernel or kernel, exc.fail) from None
    except CompileMismatch as exc:
        raise CaseStopped(State.GUARD_FAILED, str(exc)) from None


def time_case(benchmark, case: Case, prepared, ids, options: RunOptions,
              clock: CaseClock) -> tuple[list[float], PeakMemory]:
    """pytest-benchmark's rounds over prefill or decode; warm-up rounds run the same shape, unkept. A round
    that ends past the case's budget stops it (a decoder in a child process is stopped at the deadline)."""
    device, decoder = options.device, prepared.decoder
    peak = prepared.memory
    replay = getattr(decoder, "replay", None)  # a decoder in a child process times its own calls
    slow_here = 0.0 if replay is not None else options.inject_slowdown  # the child stretches its own
    step_times: list[float] = []
    calls = {"n": 0}

    def run_prefill():
        clock.next_round()
        start = time.perf_counter()
        token = decoder.prefill(ids)
        synchronize(device)
        stretch(start, slow_here)
        clock.check()
        return token

    def setup_decode():
        clock.next_round()
        synchronize(device)
        state = decoder.start(ids, case.new_tokens)
        synchronize(device)
        return (state,), {}

    def run_decode(state):
        start = time.perf_counter()
        timer = step_timer(device)
        out = decoder.decode(state, case.new_tokens, timer)
        synchronize(device)
        stretch(start, slow_here)
        clock.check()
        calls["n"] += 1
        if calls["n"] > options.warmup_rounds:
            step_times.extend(timer.intervals_s())
        return out

    peak.reset()
    try:
        with round_clock.replaying(replay):
            if case.phase == "prefill":
                benchmark.pedantic(run_prefill, rounds=options.rounds, warmup_rounds=options.warmup_rounds,
                                   iterations=1)
            else:
                benchmark.pedantic(run_decode, setup=setup_decode, rounds=options.rounds,
                                   warmup_rounds=options.warmup_rounds)
    except torch.cuda.OutOfMemoryError as exc:
        raise CaseStopped(State.OOM, f"CUDA out of memory: {str(exc)[:200]}") from None
    except BadCheckpoint as exc:
        raise CaseStopped(State.INVALID_INPUT, exc.line()) from None
    except CaseStopped as exc:  # what an engine finds it cannot do at this shape (vLLM: a prefill in two steps),
        raise stopped(exc.state, exc.reason, exc.kernel or clock.kernel, exc.fail) from None  # a crash, past its budget
    return step_times, peak


def describe(case: Case, prepared, options: RunOptions, peak: PeakMemory, step_times: list[float],
             median: float, runtime_facts: dict) -> dict:
    """The case's record: what ran, on what, how fast, with what memory (quantbench.history.record)."""
    loaded = prepared.loaded
    info = {
        **case.params(),
        "state": "ok",
        "library": loaded.library,
        **get_format(case.format).record_fields(),
        "dtype": str(loaded.dtype).replace("torch.", ""),
        "device": str(options.device),
        "checkpoint": prepared.facts.get("checkpoint"),
        "load_s": loaded.load_s,
        "peak_memory_bytes": peak.peak_bytes(),
        "peak_memory_kind": peak.kind,
        # vLLM allocates its KV pool up front (on a GPU most of the device): the peak less the pool is what
        # compares with a transformers case's peak, whose cache grows with the case
        "peak_memory_less_kv_pool_bytes": (max(0, peak.peak_bytes() - loaded.facts["kv_cache_bytes"])
                                           if loaded.facts.get("kv_cache_bytes") and peak.peak_bytes() else None),
        "guard": prepared.guard.as_dict(),
        **runtime_facts,
        "stack": stack_versions(),
        "inject_slowdown": options.inject_slowdown or None,
        **loaded.facts,
    }
    metrics = (_prefill_metrics(case, median) if case.phase == "prefill" else
               _decode_metrics(case, median, step_times, loaded.facts))
    if case.phase == "decode" and hasattr(prepared.decoder, "round_facts"):  # an engine's own timestamps
        metrics.update(prepared.decoder.round_facts(options.rounds, median))
    if hasattr(prepared.decoder, "child_facts"):  # the rounds as the child timed them, and the wall around them
        metrics.update(prepared.decoder.child_facts(options.rounds))
    return record.declared({**info, **metrics}, record.GENERATION)


def _prefill_metrics(case: Case, median: float) -> dict:
    # How history/gate turn each stored round time into the metric (value = work / time).
    return {"prefill_tokens_per_s": case.batch * case.prompt_len / median, "ttft_s": median,
            "rate_metrics": {"prefill_tokens_per_s": case.batch * case.prompt_len}, "time_metrics": ["ttft_s"]}


def _decode_metrics(case: Case, median: float, step_times: list[float], facts: dict) -> dict:
    weight_bytes = facts.get("weight_bytes_after_first_forward")
    return {"decode_tokens_per_s": case.batch * case.new_tokens / median,
            "rate_metrics": {"decode_tokens_per_s": case.batch * case.new_tokens}, "time_metrics": [],
            "token_latency_s": percentiles(step_times),
            # Every decode step reads every weight once (gpt-fast's "achieved bandwidth"); unknown weights, unknown
            "decode_weight_gbps": weight_bytes * case.new_tokens / median / 1e9 if weight_bytes else None}
