"""Timers and memory trackers: one interface, a CUDA-event and a host implementation.

GPU work is never timed with the host clock alone: the CUDA step timer records events on the
stream and reads them after one synchronize, so marking a step adds no sync to the timed loop.
"""

from __future__ import annotations

import contextlib
import time

import torch


class ReplayClock:
    """A clock that moves only by the seconds the process doing the work reported for it: pytest-benchmark's
    timer for work done in another process (an isolated runtime's child, vLLM's benchmark client), so a round's
    time is that process's own time of it and never the pipe's, the parent's wake-up or the client's start."""

    def __init__(self, name: str = "replay_clock", module: str = __name__):
        self._seconds = 0.0
        # pytest-benchmark stores its timer as module.name in every JSON: a name, never an object's address
        self.__name__, self.__module__ = name, module

    def advance(self, seconds: float) -> None:
        self._seconds += max(float(seconds), 0.0)

    def __call__(self) -> float:
        return self._seconds


class RoundClock:
    """The generation cases' timer: time.perf_counter for a runtime in this process; while a case whose runtime
    lives in a child process is timed (``replaying``), that child's ReplayClock (bench.isolation). The wall time
    around each call is recorded apart by the caller, so the pipe's share is a measured figure."""

    def __init__(self):
        self.replay: ReplayClock | None = None
        self.__name__ = "round_clock"  # as ReplayClock's

    def __call__(self) -> float:
        return self.replay() if self.replay is not None else time.perf_counter()

    @contextlib.contextmanager
    def replaying(self, replay: ReplayClock | None):
        self.replay = replay
        try:
            yield
        finally:
            self.replay = None


round_clock = RoundClock()


def stretch(start: float, fraction: float) -> None:
    """Busy-wait so the region begun at ``start`` lasts (1 + fraction) times what it took: a real, measurable
    slowdown (--qb-inject-slowdown), made where the work runs."""
    if fraction > 0:
        target = start + (time.perf_counter() - start) * (1 + fraction)
        while time.perf_counter() < target:
            pass


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class _Adopting:
    """A timer whose steps may have been timed elsewhere: a decoder in a child process hands its own
    timer's intervals over (bench.isolation)."""

    adopted: list[float] | None = None

    def adopt(self, intervals_s: list[float]) -> None:
        self.adopted = list(intervals_s)


class HostStepTimer(_Adopting):
    """Per-step wall times on the host clock (CPU devices, where work is synchronous)."""

    def __init__(self):
        self.marks: list[float] = []

    def mark(self) -> None:
        self.marks.append(time.perf_counter())

    def intervals_s(self) -> list[float]:
        if self.adopted is not None:
            return self.adopted
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


class CudaStepTimer(_Adopting):
    """Per-step device times from CUDA events; read once, after the timed region."""

    def __init__(self):
        self.events: list[torch.cuda.Event] = []

    def mark(self) -> None:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        self.events.append(event)

    def intervals_s(self) -> list[float]:
        if self.adopted is not None:
            return self.adopted
        if not self.events:
            return []
        self.events[-1].synchronize()
        return [a.elapsed_time(b) / 1e3 for a, b in zip(self.events, self.events[1:])]


def step_timer(device: torch.device | str):
    return CudaStepTimer() if torch.device(device).type == "cuda" else HostStepTimer()


class PeakMemory:
    """Peak memory of one case: CUDA allocator peak on GPU, process peak RSS (VmHWM) on CPU.

    On Linux, writing 5 to /proc/self/clear_refs resets VmHWM, so each case gets its own
    peak instead of the process-lifetime maximum.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)

    @property
    def kind(self) -> str:
        return "cuda_max_allocated" if self.device.type == "cuda" else "process_peak_rss"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            pass

    def peak_bytes(self) -> int | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        return _proc_status_kb("VmHWM")


def current_bytes(device: torch.device | str) -> int | None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return int(torch.cuda.memory_allocated(device))
    return _proc_status_kb("VmRSS")


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def storage_tensors(tensor: torch.Tensor):
    """The plain tensors that hold a tensor's bytes: itself, or a tensor subclass's inner tensors
    (torchao's Int8Tensor holds qdata and scale; the wrapper has no storage of its own)."""
    if hasattr(tensor, "__tensor_flatten__") and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = tensor.__tensor_flatten__()
        for name in names:
            yield from storage_tensors(getattr(tensor, name))
    else:
        yield tensor


def resident_weight_bytes(model: torch.nn.Module) -> dict:
    """Bytes held by parameters and buffers, each storage counted once, with a per-dtype split."""
    seen: set[int] = set()
    total, by_dtype = 0, {}
    for held in list(model.parameters()) + list(model.buffers()):
        for tensor in storage_tensors(held):
            if tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            if storage.data_ptr() in seen:
                continue
            seen.add(storage.data_ptr())
            total += storage.nbytes()
            key = str(tensor.dtype).replace("torch.", "")
            by_dtype[key] = by_dtype.get(key, 0) + storage.nbytes()
    return {"total": total, "by_dtype": by_dtype}
