"""The server interface and registry: what the serving scenario (bench.serving) measures under load.

A server is not a runtime: nothing opens it as a model and calls prefill and decode on it. The serving scenario
starts one per checkpoint, sends it requests with a load generator, reads its counters, and stops it. Adding a
server (llama.cpp's, SGLang's) is one module with a ``@register`` kind and one import in __init__.py; it is
named on the command line as a runtime is ('bf16@vllm-serve', --qb-runtimes vllm-serve).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..child import ChildProcess
from ..registry import lookup, registrar

SERVERS: dict[str, ServerKind] = {}
HOST = "127.0.0.1"  # a server binds the loopback only: nothing outside the machine reaches it


@dataclass(frozen=True)
class ServerConfig:
    """What a server is started with (the same for every checkpoint of a run)."""

    max_num_seqs: int         # requests it runs at once (vLLM's --max-num-seqs)
    max_model_len: int        # prompt + output tokens one request may hold
    enforce_eager: bool       # CPU: as vLLM's own CPU perf CI serves; GPU: the default compiled engine
    port: int | None = None   # None: a free port, picked per start
    start_budget_s: float = 600.0  # a server not healthy by then is stopped: too-slow


class Server:
    """One server process for one checkpoint. ``start`` returns once it answers (or raises a CaseStopped with
    its reason: refused, crashed, too slow); everything else is read while it runs."""

    port: int | None = None
    child: ChildProcess | None = None   # its process (bench.serving samples the group's memory under load)
    start_s: float | None = None        # seconds from launch to healthy

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """End the server's whole process group; returns once it is gone (the device is free again)."""
        raise NotImplementedError

    def check_alive(self, when: str) -> None:
        """Raise the CaseStopped its exit means when the server is gone (a crash under load is a state)."""
        raise NotImplementedError

    def metrics(self) -> dict:
        """The server's own counters now (read before and after the kept rounds)."""
        raise NotImplementedError

    def facts(self) -> dict:
        """What the server is: build, start time, memory, KV cache, processes, kernels it selected."""
        raise NotImplementedError

    def kernels(self) -> str:
        """The kernels its log says it selected ('' where it names none)."""
        return ""

    def refusal(self, input_len: int, output_len: int) -> str | None:
        """The server's own words for refusing a request of this size, asked again (HTTP clients keep only the
        status line), or None."""
        return None

    def logged_error(self) -> str | None:
        """The error its log names, or None: why a server that started failed every request."""
        return None

    def log_text(self) -> str:
        return self.child.log_text() if self.child is not None else ""

    def discard_log(self) -> None:
        """Remove its log file once the server is done with."""


def process_tree_rss(pid: int) -> int:
    """Resident bytes of a process and its children (the API server, its engine core and workers)."""
    import psutil
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


class PeakRss:
    """The highest process_tree_rss of ``pid`` sampled every ``interval_s`` while the block runs (a thread): the
    server's memory under load, not after it (KV blocks, activations and request buffers are freed or idle by
    the time a round has returned)."""

    def __init__(self, pid: int, interval_s: float = 0.05):
        import threading
        self.pid, self.interval_s, self.peak = pid, interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, process_tree_rss(self.pid))
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, process_tree_rss(self.pid))
        return False


class ServerKind:
    """One kind of server: its name, the format suffix that selects it, what it cannot serve, and how one is
    made for a checkpoint."""

    name: str = ""
    description: str = ""
    format_suffix: str | None = None

    def why_not(self, fmt, device) -> str | None:
        """Why this kind cannot serve ``fmt`` on ``device``, or None. Checked before anything starts."""
        return None

    def server(self, fmt, ckpt: Path, device, config: ServerConfig) -> Server:
        raise NotImplementedError


register = registrar(SERVERS, "server")


def get_server(name: str) -> ServerKind:
    return lookup(SERVERS, name, "server")
