"""Runs one benchmark case through pytest-benchmark and explains the result in extra_info."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from . import workloads
from .cases import Case
from .environment import stack_versions
from .compiled import CompileMismatch
from .errors import BadCheckpoint, QuantbenchError, Unsupported
from .formats import get_format
from .measure import PeakMemory, step_timer, synchronize
from .pool import ModelPool


@dataclass
class RunOptions:
    device: torch.device
    rounds: int
    warmup_rounds: int = 1
    kernel_rounds: int = 5
    inject_slowdown: float = 0.0  # test-only: stretch every timed region by this fraction


class StateRecorder:
    """Cases that did not produce a number, each with its state and reason (stored in the JSON)."""

    def __init__(self):
        self.records: list[dict] = []

    def add(self, case: Case, state: str, reason: str, nodeid: str = "") -> None:
        self.records.append({"case": case.id, "nodeid": nodeid, "state": state, "reason": reason,
                             **case.params()})

    def add_kernel(self, case, state: str, reason: str, nodeid: str = "") -> None:
        self.records.append({"case": case.id, "nodeid": nodeid, "state": state, "reason": reason,
                             "suite": "kernels", "kernel": case.kernel, "model": case.model, "shape": case.shape,
                             "K": case.k, "N": case.n, "M": case.m})


def _stretch(start: float, fraction: float) -> None:
    """Busy-wait so the timed region lasts (1 + fraction) times what it took: a real, measurable slowdown."""
    if fraction > 0:
        target = start + (time.perf_counter() - start) * (1 + fraction)
        while time.perf_counter() < target:
            pass


def percentiles(values_s: list[float]) -> dict:
    if not values_s:
        return {}
    arr = np.asarray(values_s)
    return {f"p{q}": float(np.percentile(arr, q)) for q in (50, 90, 99)}


def run_case(benchmark, case: Case, pool: ModelPool, options: RunOptions, states: StateRecorder,
             nodeid: str = "") -> dict:
    if case.error is not None:
        states.add(case, "invalid-input", case.error, nodeid)
        pytest.fail(case.error, pytrace=False)
    phase_reason = get_format(case.format).unsupported_phase(case.phase)
    if phase_reason:
        states.add(case, "unsupported", phase_reason, nodeid)
        pytest.skip(f"unsupported: {phase_reason}")
    try:
        prepared = pool.get(case.source, case.format)
    except Unsupported as exc:
        states.add(case, exc.state, str(exc), nodeid)
        pytest.skip(f"{exc.state}: {exc}")
    except QuantbenchError as exc:  # includes BadCheckpoint
        states.add(case, "invalid-input", exc.line(), nodeid)
        pytest.fail(exc.line(), pytrace=False)
    if not prepared.guard.passed:
        states.add(case, "guard-failed", prepared.guard.message(), nodeid)
        pytest.fail(f"correctness guard failed for {case.format}: {prepared.guard.message()}", pytrace=False)

    loaded, device, decoder = prepared.loaded, options.device, prepared.decoder
    ids = workloads.prompt_ids(case.batch, case.prompt_len, case.source.vocab_size(), device)
    runtime_facts = {}
    if case.phase == "decode":
        try:  # a compiled runtime compiles and checks itself at this exact shape here, before any timing
            runtime_facts = decoder.prepare(ids, case.new_tokens)
        except torch.cuda.OutOfMemoryError as exc:
            pool.release()
            states.add(case, "oom", f"CUDA out of memory while compiling: {str(exc)[:200]}", nodeid)
            pytest.skip(f"oom: {str(exc)[:200]}")
        except Unsupported as exc:
            states.add(case, exc.state, str(exc), nodeid)
            pytest.skip(f"{exc.state}: {exc}")
        except CompileMismatch as exc:
            states.add(case, "guard-failed", str(exc), nodeid)
            pytest.fail(str(exc), pytrace=False)
    peak = PeakMemory(device)
    step_times: list[float] = []
    calls = {"n": 0}

    def run_prefill():
        start = time.perf_counter()
        cache, token = workloads.prefill(loaded.model, ids)
        synchronize(device)
        _stretch(start, options.inject_slowdown)
        return token

    def setup_decode():
        synchronize(device)
        state = decoder.start(ids, case.new_tokens)
        synchronize(device)
        return (state,), {}

    def run_decode(state):
        start = time.perf_counter()
        timer = step_timer(device)
        out = decoder.decode(state, case.new_tokens, timer)
        synchronize(device)
        _stretch(start, options.inject_slowdown)
        calls["n"] += 1
        if calls["n"] > options.warmup_rounds:  # warm-up rounds run the same shape but are not kept
            step_times.extend(timer.intervals_s())
        return out

    peak.reset()
    try:
        if case.phase == "prefill":
            benchmark.pedantic(run_prefill, rounds=options.rounds, warmup_rounds=options.warmup_rounds,
                               iterations=1)
        else:
            benchmark.pedantic(run_decode, setup=setup_decode, rounds=options.rounds,
                               warmup_rounds=options.warmup_rounds)
    except torch.cuda.OutOfMemoryError as exc:
        pool.release()
        states.add(case, "oom", f"CUDA out of memory: {str(exc)[:200]}", nodeid)
        pytest.skip(f"oom: {str(exc)[:200]}")
    except BadCheckpoint as exc:
        states.add(case, "invalid-input", exc.line(), nodeid)
        pytest.fail(exc.line(), pytrace=False)

    if benchmark.stats is None:  # --benchmark-disable: the case ran once as a smoke test, no numbers
        return {}
    median = benchmark.stats.stats.median
    info = {
        **case.params(),
        "state": "ok",
        "runtime": loaded.runtime,
        "dtype": str(loaded.dtype).replace("torch.", ""),
        "device": str(device),
        "checkpoint": prepared.facts.get("checkpoint"),
        "load_s": loaded.load_s,
        "peak_memory_bytes": peak.peak_bytes(),
        "peak_memory_kind": peak.kind,
        "guard": prepared.guard.as_dict(),
        **runtime_facts,
        "stack": stack_versions(),
        "inject_slowdown": options.inject_slowdown or None,
        **loaded.facts,
    }
    if case.phase == "prefill":
        info["prefill_tokens_per_s"] = case.batch * case.prompt_len / median
        info["ttft_s"] = median
        # How history/gate turn each stored round time into the metric (value = work / time).
        info["rate_metrics"] = {"prefill_tokens_per_s": case.batch * case.prompt_len}
        info["time_metrics"] = ["ttft_s"]
    else:
        info["decode_tokens_per_s"] = case.batch * case.new_tokens / median
        info["rate_metrics"] = {"decode_tokens_per_s": case.batch * case.new_tokens}
        info["time_metrics"] = []
        info["token_latency_s"] = percentiles(step_times)
        weight_bytes = loaded.facts.get("weight_bytes_after_first_forward") or 0
        # Every decode step reads every weight once (gpt-fast's "achieved bandwidth").
        info["decode_weight_gbps"] = weight_bytes * case.new_tokens / median / 1e9
    benchmark.extra_info.update(info)
    return info
