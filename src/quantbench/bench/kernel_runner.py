"""One kernel case (kernel x (K, N) x M) through pytest-benchmark, with roofline figures."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import kernels
from ..errors import CaseStopped, State
from ..history import record
from ..history.ceilings import percent
from ..measure import synchronize
from ..specs import load_spec
from .states import record_and_end

# On CPU, AutoAWQ's naive path costs ~9 s per call at M=128 on the 1.1B down projection (its
# dequantized fp16 matmul hits a slow CPU kernel), so the CPU sweep stays short.
CPU_M = "1,4,16"
GPU_M = "1,2,4,8,16,32,64,128,256,512,1024,2048,4096,8192"
MAX_COPIES, MAX_WORKING_SET = 64, 4 * 2**30


@dataclass(frozen=True)
class KernelCase:
    kernel: str
    model: str
    shape: str      # projection names sharing this (K, N)
    k: int
    n: int
    m: int

    @property
    def id(self) -> str:
        return f"{self.model}-{self.shape}-K{self.k}-N{self.n}-M{self.m}-{self.kernel}"


def kernel_cases(models: list[str], kernel_names: list[str], ms: list[int]) -> list[KernelCase]:
    """(K, N) from the specs' projections, deduplicated per model, kernels innermost-but-one so a
    prepared weight set serves every M."""
    cases = []
    for model in models:
        shapes: dict[tuple[int, int], list[str]] = {}
        for proj, kn in load_spec(model).linear_shapes().items():
            shapes.setdefault(kn, []).append(proj.replace("_proj", ""))
        for (k, n), names in shapes.items():
            for kernel in kernel_names:
                for m in ms:
                    cases.append(KernelCase(kernel, model, "+".join(names), k, n, m))
    return cases


def cache_bytes(device: torch.device) -> int:
    """L2 on a GPU; the last-level cache on a CPU (sysfs)."""
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 * 2**20))
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip()
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1], 1)
        sizes.append(int(text.rstrip("KMG")) * unit)
    return max(sizes, default=32 * 2**20)


class PreparedCache:
    """Keeps one prepared (kernel, K, N) weight set alive at a time."""

    def __init__(self):
        self.key, self.value = None, None

    def get(self, key, build):
        if key != self.key:
            self.key, self.value = None, None
            self.value, self.key = build(), key
        return self.value


def run_kernel_case(benchmark, case: KernelCase, device: torch.device, cache: PreparedCache, peaks: dict,
                    rounds: int, states, nodeid: str = "") -> dict:
    kernel, llc = kernels.KERNELS[case.kernel], cache_bytes(device)
    try:
        prepared, x, err = _prepare(case, kernel, device, cache, llc)
    except CaseStopped as exc:
        record_and_end(states, case, exc, nodeid, kernel_case=True)
    warm_copies(prepared, x, device)
    run, iters, timing = timed_loop(prepared, x, device, _iterations(prepared, x, device))
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=2, iterations=1)
    if benchmark.stats is None:
        return {}
    info = _describe(case, kernel, prepared, device, peaks, benchmark.stats.stats.median / iters, iters, err, llc)
    floor = launch_floor_s(device, timing.startswith("CUDA graph"))
    info.update(timing=timing, launch_floor_s=floor,
                near_launch_floor=info["time_per_call_s"] < floor + NEAR_FLOOR_S)
    benchmark.extra_info.update(info)
    return info


# A call within this much of the launch floor times the launch, not the kernel: its GB/s and TFLOP/s say little.
NEAR_FLOOR_S = 3e-6
_FLOORS: dict = {}


def timed_loop(prepared, x, device, iters: int):
    """One timed round: (run, calls per round, how it is timed). On CUDA the calls are captured once in a CUDA
    graph and each round replays it (device time: a small-M case times the kernel, not Python's launches; the
    H100 run's torch-fp16 at M=1 read 1.8% of the copy bandwidth on a launch-bound host loop); the graph cycles
    through every weight copy, so each replay reads past the cache. Elsewhere, or where capture fails, the calls
    run from Python, synchronized once per round."""
    copies = prepared.copies
    if device.type == "cuda":
        calls = max(iters, len(copies))

        def loop():
            for j in range(calls):
                prepared.call(x, copies[j % len(copies)])
        try:
            replay = cuda_graph(loop)
        except Exception as exc:  # noqa: BLE001 - a kernel that cannot be captured is timed from the host
            reason = f"host loop (CUDA graph capture failed: {type(exc).__name__}: {str(exc)[:120]})"
        else:
            def run_graph():
                replay()
                synchronize(device)
            return run_graph, calls, f"CUDA graph replay of {calls} calls (device time)"
    else:
        reason = "host loop, synchronized per round"
    position = {"i": 0}

    def run():
        i = position["i"]
        for j in range(iters):
            prepared.call(x, copies[(i + j) % len(copies)])
        position["i"] = (i + iters) % len(copies)
        synchronize(device)
    return run, iters, reason


def cuda_graph(loop):
    """``loop`` captured in a CUDA graph (warmed on a side stream first, as torch's docs ask): its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        loop()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        loop()
    return graph.replay


def launch_floor_s(device, graphed: bool) -> float:
    """The time per call of a kernel that does nothing (a one-element add), timed the way the cases are: the
    floor no case can go under."""
    key = (str(device), graphed)
    if key not in _FLOORS:
        one = torch.zeros(1, device=device)
        calls = 1000

        def loop():
            for _ in range(calls):
                one.add_(0)
        run = cuda_graph(loop) if graphed else loop
        run()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(5):
            run()
        synchronize(device)
        _FLOORS[key] = (time.perf_counter() - start) / (5 * calls)
    return _FLOORS[key]


def _prepare(case: KernelCase, kernel, device, cache: PreparedCache, llc: int):
    """The kernel's weight copies (enough to rotate past the cache), an input, and its error vs fp32."""
    reason = kernel.unsupported_reason(device)
    if reason:
        raise CaseStopped(State.UNSUPPORTED, reason)

    def build():
        one = kernels.weight_bytes(case.kernel, case.k, case.n)
        copies = max(2, min(MAX_COPIES, math.ceil(2 * llc / max(1, one)) + 1, MAX_WORKING_SET // max(1, one)))
        return kernel.prepare(case.k, case.n, device, copies)
    try:
        prepared = cache.get((case.kernel, case.k, case.n), build)
        gen = torch.Generator().manual_seed(case.m * 31 + case.k)
        x = torch.randn(case.m, case.k, generator=gen).to(kernel.dtype).to(device)
        got = prepared.call(x, prepared.copies[0])
        ref = x.float() @ prepared.reference_weight.t()
        err = kernels.rel_err(got, ref)
    except torch.cuda.OutOfMemoryError as exc:
        cache.key, cache.value = None, None
        raise CaseStopped(State.OOM, str(exc)[:200]) from None
    if not err <= kernels.tolerance(kernel):
        raise CaseStopped(State.GUARD_FAILED, f"{case.kernel} output differs from fp32 reference: rel err {err:.4g} "
                          f"(bound {kernels.tolerance(kernel)})")
    return prepared, x, err


def warm_copies(prepared, x, device) -> None:
    """One call on every weight copy before any is timed or counted: a library may do one-time work the first time a
    module runs (gptqmodel's TorchLinear on CPU: ~65 ms on a 256x256 weight's first call, then ~0.5 ms), and the
    rounds rotate through the copies, so a copy first met inside a round timed that work, not the kernel."""
    for copy in prepared.copies:
        prepared.call(x, copy)
    synchronize(device)


def _iterations(prepared, x, device) -> int:
    """Enough calls per round that a round is long against timer resolution and launch jitter."""
    synchronize(device)
    start = time.perf_counter()
    for i in range(3):
        prepared.call(x, prepared.copies[i % len(prepared.copies)])
    synchronize(device)
    per_call = (time.perf_counter() - start) / 3
    target = 0.005 if device.type == "cuda" else 0.02
    return max(1, min(2000, math.ceil(target / max(per_call, 1e-7))))


def _describe(case: KernelCase, kernel, prepared, device, peaks: dict, t: float, iters: int, err: float,
              llc: int) -> dict:
    """The kernel case's record: time per call, TFLOP/s and GB/s against the device's ceilings."""
    copies = prepared.copies
    moved = kernels.bytes_moved(case.kernel, case.m, case.k, case.n)
    work = kernels.flops(case.m, case.k, case.n)
    tflops, gbps = work / t / 1e12, moved / t / 1e9
    dtype = str(kernel.dtype).replace("torch.", "")
    peak_tflops = (peaks.get("tflops") or {}).get(dtype)
    return record.declared({
        "suite": "kernels", "kernel": case.kernel, "model": case.model, "shape": case.shape,
        "K": case.k, "N": case.n, "M": case.m, "state": "ok", "path": prepared.path, "device": str(device),
        "iterations_per_round": iters, "time_per_call_s": t, "tflops": tflops, "gbps": gbps,
        "bytes_moved": moved, "flops": work, "arithmetic_intensity": work / moved,
        "pct_peak_tflops": percent(tflops, peak_tflops), "pct_peak_gbps": percent(gbps, peaks.get("memory_gbps")),
        "peaks_source": peaks.get("source"), "rel_err_vs_fp32": err, "rel_err_bound": kernels.tolerance(kernel),
        "weight_copies": len(copies), "weight_bytes_per_copy": prepared.weight_bytes,
        "working_set_bytes": len(copies) * prepared.weight_bytes, "cache_bytes": llc,
        "working_set_exceeds_2x_cache": len(copies) * prepared.weight_bytes > 2 * llc,
        "rate_metrics": {"tflops": work * iters / 1e12, "gbps": moved * iters / 1e9},
        "time_metrics": [], **kernel.record_fields(),
    }, record.KERNEL)
