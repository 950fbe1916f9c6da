"""A run survives its engine: a runtime in a child process that aborts, is killed or hangs becomes its cases'
state (crashed / too-slow) and the rest of the run is stored; the gate fails a case measured before and
crashed now. The stand-in engine is tests/fault_runtime.py; the real vLLM abort is in tests/test_vllm.py."""

import json
import signal

import pytest

from quantbench.bench.budgets import Budget, CaseClock, load_budgets, parse_budgets
from quantbench.bench.isolation import crash_words, fault_frames, last_words, where_it_died
from quantbench.dispatch import kernel_words, naive_primitives, parse_verbose
from quantbench.errors import QuantbenchError
from quantbench.gate.decisions import Sample, Threshold, decide, exit_code
from quantbench.report.findings import stated_flags

from .conftest import run_cli, run_pytest

FAULT_DUMP = """Fatal Python error: Aborted

Thread 0x00007f6c023d96c0 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 331 in wait

Current thread 0x00007f6c84fc4b80 (most recent call first):
  File "/venv/lib/python3.11/site-packages/torch/_ops.py", line 1279 in __call__
  File "/venv/lib/python3.11/site-packages/vllm/model_executor/kernels/linear/scaled_mm/cpu.py", line 219 in _apply_weights_sgl
  File "/venv/lib/python3.11/site-packages/vllm/model_executor/layers/linear.py", line 610 in forward

Extension modules: numpy._core._multiarray_umath
"""
CPP_LOG = ["INFO loading", "terminate called after throwing an instance of 'c10::Error'",
           "  what():  scale_C: scalar path not implemented!",
           "Exception raised from apply at /tmp/vllm/csrc/cpu/sgl-kernels/gemm_int8.cpp:21 (most recent call first):",
           "frame #0: c10::Error::Error(...)", "<omitting python frames>"]


@pytest.mark.stack_independent
def test_a_crash_is_named_by_its_signal_the_frame_it_died_in_and_what_it_said_last():
    frames = fault_frames(FAULT_DUMP)
    assert frames[0][2] == "__call__" and frames[1][2] == "_apply_weights_sgl" and len(frames) == 3
    where = where_it_died(frames)  # torch's dispatch frame is skipped; the source file is not here to read
    assert where.startswith("_apply_weights_sgl (vllm/model_executor/kernels/linear/scaled_mm/cpu.py:219")
    assert last_words(CPP_LOG) == "scale_C: scalar path not implemented!"
    words = crash_words(-signal.SIGABRT, FAULT_DUMP, CPP_LOG, "decode round 2 of 5")
    assert words.startswith("SIGABRT in _apply_weights_sgl") and "during decode round 2 of 5" in words
    assert words.endswith("last log line: scale_C: scalar path not implemented!")
    killed = crash_words(-signal.SIGKILL, "", ["INFO step 3"], "prefill round 1 of 2")
    assert killed == ("SIGKILL (killed from outside: the kernel's OOM killer, or a user); during prefill round 1 "
                      "of 2; last log line: INFO step 3")
    assert crash_words(3, "", [], "x").startswith("exit code 3")


@pytest.mark.stack_independent
def test_onednn_verbose_names_the_implementation_and_a_reference_gemm_is_a_naive_fallback():
    log = ("onednn_verbose,v1,info,oneDNN v3.12.0\n"
           "onednn_verbose,v1,primitive,exec,cpu,matmul,brg_matmul:avx10_1_512_amx,undef,src:bf16::blocked:ab::f0 "
           "wei:bf16::blocked:ba::f0 dst:bf16::blocked:ab::f0,attr-scratchpad:user,,4x256:256x512,0.49\n"
           "onednn_verbose,v1,primitive,exec,cpu,matmul,ref:any,undef,src:f8_e4m3:a:blocked:ab::f0 "
           "wei:f8_e4m3:a:blocked:ab::f0 dst:bf16:a:blocked:ab::f0,attr-scratchpad:user,,4x256:256x512,9.12\n") * 2
    prims = parse_verbose(log)
    assert prims == {"matmul brg_matmul:avx10_1_512_amx (bf16 x bf16 -> bf16)": 2,
                     "matmul ref:any (f8_e4m3 x f8_e4m3 -> bf16)": 2}
    assert naive_primitives(prims) == ["matmul ref:any (f8_e4m3 x f8_e4m3 -> bf16)"]
    kernel = kernel_words("ChannelWiseTorchFP8ScaledMMLinearKernel", prims)
    assert kernel == ("ChannelWiseTorchFP8ScaledMMLinearKernel [oneDNN matmul ref:any (f8_e4m3 x f8_e4m3 -> bf16): "
                      "naive fallback]")
    assert kernel_words("X", {"matmul brg_matmul:avx512_core_amx (bf16 x bf16 -> bf16)": 3}) == "X"
    # vLLM's own oneDNN copy logs its creations (ONEDNN_VERBOSE=profile_create), read apart from executions
    created = ("onednn_verbose,v1,primitive,create:cache_miss,cpu,matmul,brg_matmul:avx512_core_vnni,undef,"
               "src:s8::blocked:ab::f0 wei:s8::blocked:BA16a64b4a::f0 dst:f32::blocked:ab::f0,,,4x256:256x512,0.4\n"
               "onednn_verbose,v1,primitive,create:cache_hit,cpu,reorder,simple:any,undef,src:s8::blocked:ba::f0 "
               "dst:s8::blocked:BA16a64b4a::f0,,,256x512,0.01\n")
    assert parse_verbose(created, "create") == {"matmul brg_matmul:avx512_core_vnni (s8 x s8 -> f32)": 1,
                                                "reorder simple:any (s8 -> s8)": 1}
    assert parse_verbose(created) == {} and parse_verbose(log, "create") == {}


@pytest.mark.stack_independent
def test_budgets_come_per_device_kind_and_a_bad_file_is_one_line(tmp_path):
    assert load_budgets("cpu").case_s > 0 and load_budgets("cuda").engine_start_s > load_budgets("cpu").case_s
    assert load_budgets("gpu") == load_budgets("cuda")  # one device-kind word, 'gpu', as in the thresholds file
    cpu = load_budgets("cpu")
    assert load_budgets("cpu", case_s=7) == Budget(7.0, cpu.engine_start_s, cpu.server_start_s)
    assert cpu.server_s < cpu.engine_start_s  # a server's start has its own, shorter budget on CPU
    assert load_budgets("cpu", engine_start_s=9).server_s == 9  # --qb-start-budget bounds every start
    assert parse_budgets("[cpu]\ncase_s = 1\nengine_start_s = 3\n", "cpu", "b.toml").server_s == 3  # none set
    # a lent GPU runner's 10-minute command: every case and start ends inside one (3ae1c25: 900 s and 1800 s)
    cuda = load_budgets("cuda")
    assert cuda.case_s <= 180 and cuda.engine_start_s <= 300 and cuda.server_s <= 300
    for text, words in [("[cpu]\ncase_s = 1\n", "missing ['engine_start_s']"), ("[gpu]\n", "no [cpu] table"),
                        ("[cpu]\ncase_s = -1\nengine_start_s = 3\n", "positive number"), ("[cpu", "invalid")]:
        with pytest.raises(QuantbenchError) as err:
            parse_budgets(text, "cpu", "b.toml")
        assert err.value.line().startswith("b.toml: ") and words in err.value.line() and "Fix:" in err.value.line()
    with pytest.raises(QuantbenchError, match=r"rename \[cuda\] to \[gpu\]"):  # the word the thresholds use
        parse_budgets("[cuda]\ncase_s = 1\nengine_start_s = 3\n", "cuda", "b.toml")


@pytest.mark.stack_independent
def test_a_case_past_its_budget_says_what_it_reached():
    clock = CaseClock(budget_s=0.0, phase="decode", rounds=5, warmup=1, batch=4, kernel="K")
    clock.next_round()
    words = str(clock.too_slow(steps=3))
    assert words.startswith("decode round 1 of 6, 1 warm-up after 0 s, 3 decode steps into it (")
    assert words.endswith("tok/s), budget 0 s; kernel K")
    with pytest.raises(Exception, match="budget 0 s"):
        clock.check()


@pytest.mark.stack_independent
def test_the_gate_fails_a_case_measured_before_that_crashed_now_and_not_one_stated_in_both():
    threshold = Threshold()
    measured, crashed = Sample(100.0, (100.0,) * 5), Sample(float("nan"), state="crashed", reason="SIGABRT in op")
    now = decide("c", "decode_tokens_per_s", crashed, measured, threshold)
    assert now.state == "crashed" and now.baseline == 100.0 and "measured in the baseline" in now.note
    assert exit_code([now]) == 1
    both = decide("c", "decode_tokens_per_s", crashed, crashed, threshold)
    assert both.state == "crashed" and exit_code([both]) == 0 and exit_code([both], ("crashed",)) == 1
    slow = decide("c", "*", Sample(float("nan"), state="too-slow", reason="r"), measured, threshold)
    assert slow.state == "too-slow" and exit_code([slow]) == 1


@pytest.mark.stack_independent
def test_the_guide_lists_crashed_and_too_slow_cases_with_the_fallbacks():
    import pandas as pd
    gen = pd.DataFrame([
        {"model": "tiny", "format": "ct-w8a8", "runtime": "vllm", "state": "crashed", "reason": "SIGABRT in op"},
        {"model": "tiny", "format": "ct-w8a8", "runtime": "vllm", "state": "crashed", "reason": "not run: died"},
        {"model": "tiny", "format": "ct-fp8", "runtime": "vllm", "state": "too-slow", "reason": "decode round 1"},
        {"model": "tiny", "format": "bf16", "runtime": "vllm", "state": "ok", "reason": None}])
    assert stated_flags(gen) == ["TOO SLOW: tiny: ct-fp8 on vllm (1 case(s)): decode round 1",
                                 "CRASHED: tiny: ct-w8a8 on vllm (2 case(s)): SIGABRT in op"]


# ----------------------------------------------------------------------------- a stand-in engine, end to end
FAULT_RUN = ["benchmarks/test_generation.py", "-p", "tests.fault_runtime", "--qb-formats", "bf16@fault",
             "--qb-batch", "2,4", "--qb-prompt", "8", "--qb-new-tokens", "4", "--qb-rounds", "2",
             "--qb-case-budget", "20", "-q", "-rs"]


def _fault_run(tmp_path, fault: str):
    out, history = tmp_path / f"{fault or 'clean'}.json", tmp_path / "history"
    result = run_pytest(*FAULT_RUN, f"--benchmark-json={out}", f"--qb-history={history}",
                        env={"QUANTBENCH_FAULT": fault})
    assert out.is_file(), result.stdout[-3000:] + result.stderr[-2000:]
    data = json.loads(out.read_text())
    measured = {(b["extra_info"]["phase"], b["extra_info"]["batch"]) for b in data["benchmarks"]}
    states = {(s["phase"], s["batch"]): s for s in data["quantbench"]["states"]}
    stored = list(history.rglob("*.json"))
    return result, measured, states, stored, out


@pytest.fixture(scope="module")
def fault_runs(tiny_checkpoints, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    return {fault: _fault_run(tmp / (fault or "clean"), fault) for fault in ("", "abort", "kill", "hang")}


@pytest.mark.stack_independent
@pytest.mark.parametrize("fault,state,words", [
    ("abort", "crashed", "SIGABRT in _fault_now (tests/fault_runtime.py"),
    ("kill", "crashed", "SIGKILL (killed from outside"),
    ("hang", "too-slow", "decode round 1 of 5, 3 warm-up after 2")])
def test_an_engine_that_dies_or_hangs_is_its_cases_state_and_the_run_is_stored(fault_runs, fault, state, words):
    result, measured, states, stored, _ = fault_runs[fault]
    assert {("prefill", 2)} <= measured, result.stdout[-3000:]
    died = states[("decode", 2)]
    assert died["state"] == state and words in died["reason"], died
    # was `assert ... if state == "too-slow" else True`: for a crash it asserted nothing (issue 32)
    assert died["kernel"], died  # the kernel the engine named before it died or hung
    if state == "too-slow":
        assert "budget 20 s" in died["reason"], died
    assert len(stored) == 1, stored  # the JSON and the history were written though the engine died
    if state == "crashed":  # the cases its process had left are stated with the crash, never run on a corpse
        for key in (("prefill", 4), ("decode", 4)):
            assert states[key]["state"] == "crashed" and states[key]["reason"].startswith("not run: "), states[key]
    else:  # a new engine for the prefill; the larger decode would pass its budget too
        assert ("prefill", 4) in measured and states[("decode", 4)]["reason"].startswith("not run: ")
    assert result.returncode == 0, result.stdout[-3000:]  # stated cases skip: the run itself passes


@pytest.mark.stack_independent
def test_the_gate_fails_the_case_that_crashed_after_it_was_measured(fault_runs):
    clean, aborted = fault_runs[""], fault_runs["abort"]
    assert clean[1] == {(p, b) for p in ("prefill", "decode") for b in (2, 4)} and not clean[2], clean[0].stdout[-2000:]
    gate = run_cli("gate", "--current", str(aborted[4]), "--baseline", str(clean[4]))
    assert gate.returncode == 1, gate.stdout[-3000:] + gate.stderr[-2000:]
    assert "crashed" in gate.stdout and "measured in the baseline" in gate.stdout
    assert "missing" not in [line.split()[0] for line in gate.stdout.splitlines() if line.strip()]


@pytest.mark.stack_independent
def test_a_call_outside_any_case_waits_without_a_deadline_in_the_child(tiny_checkpoints):
    """decoder.call runs a function in the child (the overhead test's bare loop) with no budget: a wait of a year
    must not overflow poll's millisecond timeout."""
    import torch

    from quantbench.bench.isolation import open_isolated
    from quantbench.formats import get_format
    from quantbench.runtimes import Shapes
    from tests.fault_runtime import FaultInjection, decoder_kind

    ids = torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(0))
    opened = open_isolated(FaultInjection(), get_format("bf16"), tiny_checkpoints["dense"], torch.device("cpu"), ids,
                           Shapes(max_batch=1, max_prompt=8, new_tokens=2), start_budget_s=300)
    try:
        assert opened.decoder.call(decoder_kind, 7) == ("FaultyDecoder", 7)
        assert opened.loaded.facts["isolation"].startswith("child process")
    finally:
        opened.decoder.close()


@pytest.mark.stack_independent
def test_a_cases_deadline_ends_with_its_rounds():
    """3ae1c25 set a child-process case's deadline in begin_case and never cleared it: the case's facts, read after
    its rounds (outside the state handler), ran under what the finished case had left, so a case that ended just
    inside its budget raised a raw TooSlow as a test error and killed the worker its checkpoint's next cases
    needed."""
    import time

    import torch

    from quantbench.bench.isolation import RemoteDecoder
    from quantbench.errors import TooSlow

    class Worker:  # the child's side: a call past its deadline is stopped
        steps, child_s = 0, 0.0

        def call(self, method, *args, deadline, doing):
            if time.monotonic() > deadline:
                raise TooSlow(f"{doing}: past its deadline")
            return {"asked": method}

    decoder = RemoteDecoder(Worker(), torch.device("cpu"))
    clock = CaseClock(budget_s=0.0, phase="decode", rounds=2, warmup=1, batch=1, kernel="K")
    decoder.begin_case(clock)
    time.sleep(0.01)
    with pytest.raises(TooSlow, match="budget 0 s"):  # inside the case: its budget holds
        decoder.round_facts(2, 0.1)
    decoder.end_case(60.0)
    assert decoder.round_facts(2, 0.1) == {"asked": "round_facts"}  # its facts: a deadline of their own


# ----------------------------------------------------------------------------- the child's clock, a known answer
KNOWN_RUN = ["benchmarks/test_generation.py", "-p", "tests.fixed_work_runtime", "--qb-formats", "bf16@fixed",
             "--qb-batch", "1", "--qb-prompt", "8", "--qb-new-tokens", "4", "--qb-rounds", "7", "-q"]


def _known_run(tmp_path, *extra) -> dict:
    out = tmp_path / f"known{'-'.join(extra)}.json"
    result = run_pytest(*KNOWN_RUN, f"--benchmark-json={out}", *extra)
    assert result.returncode == 0 and out.is_file(), result.stdout[-3000:] + result.stderr[-2000:]
    return {b["extra_info"]["phase"]: b for b in json.loads(out.read_text())["benchmarks"]}


@pytest.mark.stack_independent
@pytest.mark.timing  # a known answer within 2%
def test_an_isolated_child_times_its_own_calls_and_a_slowdown_injected_there_reads_as_injected(tiny_checkpoints,
                                                                                              tmp_path):
    """3ae1c25 timed an isolated case in the parent less a global count of the pipe's share, so wall_vs_child_round
    was ~1.00 by construction, and stretched the parent's wait, not the child's work. Now the child times each
    call (its device synchronized), pytest-benchmark replays those seconds, and the wall around each call is a
    figure of its own. The stand-in engine pads every call to a known time: a prefill round is 30 ms, a decode
    round of 4 tokens 40 ms, and --qb-inject-slowdown 0.10 made in the child reads 10% +- 2%."""
    from tests.fixed_work_runtime import DECODE_STEP_S, PREFILL_S

    plain, slowed = _known_run(tmp_path), _known_run(tmp_path, "--qb-inject-slowdown", "0.10")
    for phase, expected_s in (("prefill", PREFILL_S), ("decode", 4 * DECODE_STEP_S)):
        median, info = plain[phase]["stats"]["median"], plain[phase]["extra_info"]
        assert info["isolation"].startswith("child process"), info
        assert plain[phase]["options"]["timer"] == "round_clock"  # a name in the JSON, not an address
        assert abs(median / expected_s - 1) < 0.02, (phase, median)  # the child's time of the call, not the pipe's
        assert median == pytest.approx(info["child_round_s"], rel=1e-6)  # the figures run on the child's clock
        # the wall around each call is measured apart: never less than the child's own, the pipe's share on top
        assert info["wall_round_s"] >= info["child_round_s"] and 1.0 <= info["wall_vs_child_round"] < 1.5, info
        ratio = slowed[phase]["stats"]["median"] / median
        print(f"{phase}: child {median * 1e3:.2f} ms, wall {info['wall_round_s'] * 1e3:.2f} ms "
              f"(wall_vs_child_round {info['wall_vs_child_round']:.4f}); 10% injected in the child read {ratio:.4f}")
        assert 1.08 <= ratio <= 1.12, (phase, ratio)
