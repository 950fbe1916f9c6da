"""A runtime in a child process of its own: a native abort, a segfault, the OOM killer or a hang ends the
child, never the benchmark run.

The child (multiprocessing's spawn: a fresh interpreter, no forked OpenMP or CUDA state) opens the checkpoint
with the real runtime and then serves the decoder's calls: prepare, prefill, start, decode, memory. The child
times each call itself, after synchronizing its device, and reports the seconds; the parent's pytest-benchmark
runs on a replay of them (measure.RoundClock), and the wall time around each call, pipe included, is recorded
apart (``wall_round_s``, ``wall_vs_child_round``). Every wait has a deadline: past it the child
is killed and the case is ``too-slow``; a child that dies is ``crashed`` with the signal, the op on its
Python stack (faulthandler's dump) and its last log line.
"""

from __future__ import annotations

import faulthandler
import importlib
import linecache
import multiprocessing
import os
import pickle
import re
import signal
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from .. import dispatch
from ..child import ChildProcess, become_child
from ..errors import CaseStopped, Crashed, TooSlow, stopped

LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class OpenRequest:
    """What the child opens: picklable names, not objects (the child imports its own)."""

    runtime: str
    format: str
    ckpt: str
    device: str
    guard_ids: object      # torch.Tensor
    shapes: object         # runtimes.Shapes
    threads: int
    modules: tuple[str, ...]  # imported first, so a runtime or format registered outside quantbench exists there


def _send(conn, message) -> None:
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


# ----------------------------------------------------------------------------- the child
class _CountingTimer:
    """The runtime's step timer, counting marks in shared memory: what a stopped case reached."""

    def __init__(self, inner, counter):
        self.inner, self.counter = inner, counter

    def mark(self) -> None:
        self.inner.mark()
        self.counter.value += 1

    def intervals_s(self):
        return self.inner.intervals_s()


class _Server:
    """The decoder's calls, by name, in the child; decode states stay here, the parent holds handles."""

    def __init__(self, opened, device, counter):
        from ..measure import PeakMemory
        self.decoder, self.device, self.counter = opened.decoder, device, counter
        self.states, self.peak = {}, PeakMemory(device)

    def prepare(self, ids, new_tokens):
        return self.decoder.prepare(ids, new_tokens)

    def prefill(self, ids, slowdown=0.0):
        start = time.perf_counter()
        tokens = self.decoder.prefill(ids)
        self._stretch(start, slowdown)
        return tokens

    def _stretch(self, start: float, slowdown: float) -> None:
        """--qb-inject-slowdown, made here where the work runs (the device synchronized first)."""
        if slowdown:
            from ..measure import stretch, synchronize
            synchronize(self.device)
            stretch(start, slowdown)

    def start(self, ids, new_tokens):
        handle = len(self.states) + 1
        self.states[handle] = self.decoder.start(ids, new_tokens)
        return handle

    def decode(self, handle, n, slowdown=0.0):
        from ..measure import step_timer
        start = time.perf_counter()
        timer = _CountingTimer(step_timer(self.device), self.counter)
        tokens = self.decoder.decode(self.states.pop(handle), n, timer)
        self._stretch(start, slowdown)
        return tokens, timer.intervals_s()

    def round_facts(self, kept, wall_median_s):
        facts = getattr(self.decoder, "round_facts", None)
        return facts(kept, wall_median_s) if facts else {}

    def peak_reset(self):
        self.peak.reset()

    def peak_bytes(self):
        return self.peak.peak_bytes()

    def call(self, func, args):
        return func(self.decoder, *args)


def _child_main(conn, counter, log_path: str, fault_path: str, request: OpenRequest) -> None:
    become_child(log_path)  # its own process group: a kill takes the engine's helpers (compile workers) with it
    faulthandler.enable(open(fault_path, "w"), all_threads=False)  # noqa: SIM115 - lives as long as the process
    dispatch.CHANNEL, dispatch.LOG_PATH = conn, log_path  # dispatch.report() from the runtime reaches the parent
    import torch
    torch.set_num_threads(request.threads)
    for module in request.modules:
        importlib.import_module(module)
    from ..formats import get_format
    from ..runtimes import get_runtime
    device = torch.device(request.device)
    try:
        opened = get_runtime(request.runtime).open(get_format(request.format), Path(request.ckpt), device,
                                                   request.guard_ids, request.shapes)
        loaded = opened.loaded
        snapshot = type(loaded)(None, loaded.format, loaded.library, loaded.device, loaded.dtype, loaded.load_s,
                                loaded.facts)
        _send(conn, ("ok", (snapshot, opened.outputs)))
    except BaseException as exc:  # noqa: BLE001 - every failure goes to the parent as it is
        _send(conn, _failure(exc))
        return
    server = _Server(opened, device, counter)
    from ..measure import synchronize
    while True:
        try:
            method, args = pickle.loads(conn.recv_bytes())
        except EOFError:
            return
        if method == "close":
            getattr(opened.decoder, "close", lambda: None)()
            _send(conn, ("ok", None, 0.0))
            return
        try:
            start = time.perf_counter()
            result = getattr(server, method)(*args)
            synchronize(device)  # the call's device work is in its time, not in the pickling of its result
            _send(conn, ("ok", result, time.perf_counter() - start))
        except BaseException as exc:  # noqa: BLE001
            _send(conn, _failure(exc))


def _failure(exc: BaseException) -> tuple:
    if isinstance(exc, CaseStopped):
        return ("stated", exc.state.value, exc.reason, exc.kernel, exc.fail)
    return ("error", f"{type(exc).__name__}: {exc}", traceback.format_exc())


# ----------------------------------------------------------------------------- the parent
class WorkerError(RuntimeError):
    """An exception inside the child that is not a stated case: re-raised here with its traceback."""


class Worker:
    """One child process holding one opened checkpoint."""

    def __init__(self, request: OpenRequest, what: str):
        ctx = multiprocessing.get_context("spawn")
        self.what = what
        self.dir = Path(tempfile.mkdtemp(prefix="quantbench-worker-"))
        self.log_path, self.fault_path = self.dir / "child.log", self.dir / "faulthandler.txt"
        self.conn, child_end = ctx.Pipe()
        self.counter = ctx.Value("q", 0, lock=False)
        self.notes: dict = {}
        self.child_s = 0.0  # the child's own seconds of the last call answered
        self.wall_s = 0.0   # this process's seconds around it: the child's, the pipe's and waking up to read it
        self.child = ChildProcess.function(
            what, _child_main, (child_end, self.counter, str(self.log_path), str(self.fault_path), request),
            self.log_path)
        child_end.close()

    def call(self, method: str, *args, deadline: float, doing: str = ""):
        """``method(*args)`` in the child; its result, or a stated case (Unsupported / Crashed / TooSlow)."""
        self.counter.value = 0
        sent = time.perf_counter()
        try:
            _send(self.conn, (method, args))
        except OSError:  # the child is gone already
            raise Crashed(self.crash_reason(doing or method)) from None
        result, self.child_s = self.wait(deadline, doing or method, timed=True)
        self.wall_s = time.perf_counter() - sent
        return result

    def wait(self, deadline: float, doing: str, timed: bool = False):
        """The child's answer: a result (with the child's own seconds on it when ``timed``) or a stated case."""
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                if not self.conn.poll(min(left, POLL_S)):
                    continue  # poll's timeout is a C int of milliseconds: wait in slices of an hour
                kind, *payload = pickle.loads(self.conn.recv_bytes())
            except TimeoutError:
                self.kill()
                raise TooSlow(doing) from None  # the caller words it: it knows the budget and the rounds
            except (EOFError, ConnectionError, OSError):
                raise Crashed(self.crash_reason(doing)) from None
            if kind == "note":
                self.notes.update(payload[0])
                continue
            if kind == "ok":
                return tuple(payload) if timed else payload[0]
            if kind == "stated":
                raise stopped(*payload)
            raise WorkerError(f"{payload[0]} (in the child process running {self.what}):\n{payload[1]}")

    @property
    def steps(self) -> int:
        """Step marks of the call in flight (decode steps)."""
        return self.counter.value

    def crash_reason(self, doing: str) -> str:
        code = self.child.join()
        self.close_quietly()
        fault = self.fault_path.read_text(errors="replace") if self.fault_path.is_file() else ""
        return crash_words(code, fault, self.log_tail(), doing)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        return self.child.log_tail(lines)

    def kill(self) -> None:
        self.child.stop()  # SIGKILL to its group: an engine in native code does not answer a SIGTERM in time
        self.close_quietly()

    def close(self, timeout_s: float = 120) -> None:
        """Ask the child to close its engine and exit; kill it if it does not."""
        if self.child.alive():
            try:
                self.call("close", deadline=time.monotonic() + timeout_s)
            except (CaseStopped, WorkerError, OSError):
                pass
        self.kill()

    def close_quietly(self) -> None:
        try:
            self.conn.close()
        except OSError:
            pass


# ----------------------------------------------------------------------------- why a child died (pure)
_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')
_OP = re.compile(r"torch\.ops\.[\w.]+|torch\._[A-Za-z]\w*|torch\.[a-z]\w*(?:\.[a-z]\w*)*")
# Frames that only carry the call to the op (torch's dispatch, the interpreter's own modules).
_CARRIERS = ("/torch/_ops.py", "/torch/nn/modules/module.py", "/torch/_compile.py", "/torch/_dynamo/")


def fault_frames(fault_text: str) -> list[tuple[str, int, str]]:
    """faulthandler's dump -> (file, line, function) of the thread that died, innermost first."""
    lines = fault_text.splitlines()
    heads = [i for i, line in enumerate(lines) if "most recent call first" in line]
    current = [i for i in heads if lines[i].startswith("Current thread")]
    if not heads:
        return []
    frames = []
    for line in lines[(current or heads)[0] + 1:]:
        match = _FRAME.match(line)
        if not match:
            break
        frames.append((match["file"], int(match["line"]), match["func"]))
    return frames


def _short(path: str) -> str:
    return path.split("site-packages/", 1)[-1] if "site-packages/" in path else os.path.relpath(path)


def where_it_died(frames: list[tuple[str, int, str]]) -> str | None:
    """The op on the stack: the innermost frame outside torch's dispatch, with the op its source line calls."""
    if not frames:
        return None
    file, line, func = next((f for f in frames if not any(c in f[0] for c in _CARRIERS)), frames[0])
    source = linecache.getline(file, line).strip()
    op = _OP.search(source)
    place = f"{_short(file)}:{line}, {func}"
    if op:
        return f"{op.group(0)} ({place})"
    return f"{func} ({place}: {source[:120]})" if source else f"{func} ({place})"


def signal_name(exitcode: int | None) -> str:
    if exitcode is None:
        return "no exit status"
    if exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def crash_words(exitcode: int | None, fault_text: str, log_tail: list[str], doing: str) -> str:
    """One line: the signal, where it died (or who killed it), what the child last logged, what it was doing."""
    name = signal_name(exitcode)
    where = where_it_died(fault_frames(fault_text))
    if where:
        head = f"{name} in {where}"
    elif exitcode == -signal.SIGKILL:
        head = f"{name} (killed from outside: the kernel's OOM killer, or a user)"
    else:
        head = name
    last = last_words(log_tail)
    return f"{head}; during {doing}" + (f"; last log line: {last[:200]}" if last else "")


_NOT_WORDS = ("Fatal Python error", "Current thread", "Thread ", "  File", "Extension modules", "frame #",
              "<omitting python frames>", "Exception raised from", "onednn_verbose")


def last_words(log_tail: list[str]) -> str | None:
    """What the child said last: a C++ exception's what() where it threw one (TORCH_CHECK's message, before the
    abort), else its last line that is not a stack frame."""
    what = [line.split("what():", 1)[1].strip() for line in log_tail if "what():" in line]
    if what:
        return what[-1]
    return next((line.strip() for line in reversed(log_tail) if line.strip() and not line.startswith(_NOT_WORDS)), None)


def importable_modules(*objects) -> tuple[str, ...]:
    """The modules that define ``objects``' classes, for the child to import (a runtime or format registered
    by a plugin outside quantbench); quantbench's own are imported by quantbench itself."""
    names = []
    for obj in objects:
        module = type(obj).__module__
        if not module.startswith("quantbench") and module != "__main__" and module in sys.modules:
            names.append(module)
    return tuple(dict.fromkeys(names))


# ----------------------------------------------------------------------------- the runtime's face in the parent
POLL_S = 3600.0
FOREVER_S = 365 * 86400.0  # a call outside a case (closing, the overhead test's own loop) waits as long as it takes


class RemotePeak:
    """PeakMemory's interface over the child's own: its RSS high-water mark (or CUDA peak), not the parent's."""

    def __init__(self, decoder: RemoteDecoder, kind: str):
        self.decoder, self.kind = decoder, kind

    def reset(self) -> None:
        self.decoder.remote("peak_reset")

    def peak_bytes(self) -> int | None:
        return self.decoder.remote("peak_bytes")


class RemoteDecoder:
    """The decoder interface (prepare, prefill, start, decode, round_facts) forwarded to the child. A case's
    clock (bench.budgets.CaseClock) sets every call's deadline: past it the child is killed, TooSlow."""

    def __init__(self, worker: Worker, device):
        from ..measure import PeakMemory, ReplayClock
        self.worker, self.clock = worker, None
        self.memory = RemotePeak(self, PeakMemory(device).kind)
        self.replay = ReplayClock()  # the child's own seconds of each timed call: the rounds' clock
        self.child_round_s: list[float] = []
        self.wall_round_s: list[float] = []
        self.slowdown = 0.0

    def begin_case(self, clock, slowdown: float = 0.0) -> None:
        """A case's rounds begin: its deadline is ``clock``'s; ``slowdown`` (--qb-inject-slowdown) is made in
        the child."""
        self.clock, self.after_case, self.slowdown = clock, None, slowdown
        self.child_round_s, self.wall_round_s = [], []

    def end_case(self, facts_s: float) -> None:
        """The case's rounds are over: its deadline ends with them. What is asked of the child afterwards (the
        case's facts) has ``facts_s`` of its own, never what the finished case had left."""
        self.clock, self.after_case = None, time.monotonic() + facts_s

    def remote(self, method: str, *args):
        clock, after = self.clock, getattr(self, "after_case", None)
        deadline = clock.deadline if clock is not None else after or time.monotonic() + FOREVER_S
        try:
            return self.worker.call(method, *args, deadline=deadline,
                                    doing=clock.doing() if clock is not None else method)
        except TooSlow:
            if clock is None:
                raise
            raise clock.too_slow(self.worker.steps) from None

    def prepare(self, ids, new_tokens: int) -> dict:
        return self.remote("prepare", ids, new_tokens)

    def prefill(self, ids):
        tokens = self.remote("prefill", ids, self.slowdown)
        self._timed()
        return tokens

    def _timed(self) -> None:
        """A timed call answered: the child's seconds move the rounds' clock; the wall around it is kept apart."""
        self.replay.advance(self.worker.child_s)
        self.child_round_s.append(self.worker.child_s)
        self.wall_round_s.append(self.worker.wall_s)

    def start(self, ids, new_tokens: int):
        return self.remote("start", ids, new_tokens)

    def decode(self, handle, n: int, timer=None):
        tokens, intervals = self.remote("decode", handle, n, self.slowdown)
        if timer is not None:
            timer.adopt(intervals)
        self._timed()
        return tokens

    def round_facts(self, kept: int, wall_median_s: float) -> dict:
        """The runtime's own facts of a decode case (an engine's own timestamps)."""
        return self.remote("round_facts", kept, wall_median_s)

    def child_facts(self, kept: int) -> dict:
        """The kept rounds as the child timed them (what the case's figures are) and as this process saw them
        around the pipe: the wall's median over the child's is the pipe's share, measured."""
        child, wall = self.child_round_s[-kept:], self.wall_round_s[-kept:]
        if not child:
            return {}
        child_s, wall_s = statistics.median(child), statistics.median(wall)
        return {"child_round_s": child_s, "wall_round_s": wall_s,
                "wall_vs_child_round": wall_s / child_s if child_s else None}

    def call(self, func, *args):
        """``func(decoder, *args)`` in the child, with the runtime's own decoder (a module-level function);
        outside any case, so outside its budget."""
        return self.worker.call("call", func, args, deadline=time.monotonic() + FOREVER_S, doing=func.__name__)

    def close(self) -> None:
        self.worker.kill()  # the child's exit frees its engine whole; nothing there is worth a clean close

    @property
    def alive(self) -> bool:
        return self.worker.child.alive()


def open_isolated(runtime, fmt, ckpt, device, guard_ids, shapes, start_budget_s: float):
    """``runtime.open(...)`` in a child process of its own -> Opened whose decoder is the child's."""
    import torch

    from ..runtimes.base import Opened
    what = f"{fmt.name} on {runtime.name}"
    request = OpenRequest(runtime.name, fmt.name, str(ckpt), str(device), guard_ids.cpu(), shapes,
                          torch.get_num_threads(), importable_modules(runtime, fmt))
    worker = Worker(request, what)
    start = time.monotonic()
    doing = f"the start of {what}"
    try:
        loaded, outputs = worker.wait(start + start_budget_s, doing)
    except (TooSlow, Crashed) as exc:
        stage, kernel = worker.notes.get("stage"), worker.notes.get("kernel")
        where = f" ({stage})" if stage else " (loading)"
        if isinstance(exc, TooSlow):
            last = next(iter(worker.log_tail(1)), "")
            stated = TooSlow(f"{doing}{where} after {time.monotonic() - start:.0f} s, budget {start_budget_s:.0f} s"
                             + (f"; kernel {kernel}" if kernel else "") + (f"; last log line: {last[:200]}" if last else ""),
                             kernel)
        else:
            stated = Crashed(exc.reason.replace(f"during {doing}", f"during {doing}{where}")
                             + (f"; kernel {kernel}" if kernel else ""), kernel)
        raise stated from None
    except BaseException:
        worker.kill()
        raise
    loaded.facts["isolation"] = f"child process (spawn), pid {worker.child.pid}"
    return Opened(loaded, outputs, RemoteDecoder(worker, device))
