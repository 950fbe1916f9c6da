"""The benchmark suite end to end on CPU: JSON for every format, user checkpoints by path."""

import json

import pytest

from quantbench.formats import FORMATS

from .conftest import run_pytest

SMALL = ["--qb-batch", "1,2", "--qb-prompt", "16", "--qb-new-tokens", "4", "--qb-rounds", "2"]


@pytest.fixture(scope="module")
def bench_json(tiny_checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    result = run_pytest("benchmarks/test_generation.py", "--qb-models", "tiny", *SMALL,
                        f"--benchmark-json={out}", "-q")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return json.loads(out.read_text())


def test_every_format_has_numbers_or_a_state(bench_json):
    measured = {(b["extra_info"]["format"], b["extra_info"]["phase"]) for b in bench_json["benchmarks"]}
    states = {(s["format"], s["phase"]): s for s in bench_json["quantbench"]["states"]}
    for name in FORMATS:
        for phase in ("prefill", "decode"):
            assert (name, phase) in measured or (name, phase) in states, (name, phase)
    for state in states.values():
        assert state["state"] == "unsupported" and state["reason"]


def test_extra_info_explains_each_number(bench_json):
    for bench in bench_json["benchmarks"]:
        info = bench["extra_info"]
        key = "prefill_tokens_per_s" if info["phase"] == "prefill" else "decode_tokens_per_s"
        assert info[key] > 0 and info["peak_memory_bytes"] > 0 and info["guard"]["passed"]
        assert info["kernel"] and info["stack"]["transformers"] and info["load_s"] > 0
        assert bench["stats"]["rounds"] == 2
        if info["phase"] == "decode":
            assert set(info["token_latency_s"]) == {"p50", "p90", "p99"}
    meta = bench_json["machine_info"]["quantbench"]
    assert meta["schema_version"] == 2 and meta["signature"] and meta["versions"]["torch"]


def test_user_checkpoint_of_another_architecture_is_detected_and_benchmarked(tmp_path, monkeypatch):
    from quantbench.formats.checkpoints import ensure_checkpoint
    from quantbench.specs import load_spec
    spec_file = tmp_path / "qwen2-user.toml"
    spec_file.write_text('name = "qwen2-user"\narchitecture = "qwen2"\nhidden_size = 256\n'
                         'intermediate_size = 512\nnum_hidden_layers = 2\nnum_attention_heads = 4\n'
                         'num_key_value_heads = 2\nvocab_size = 2048\ntie_word_embeddings = true\nseed = 7\n')
    monkeypatch.setenv("QUANTBENCH_CACHE", str(tmp_path / "cache"))
    user_dir = ensure_checkpoint(load_spec(str(spec_file)), "ct-w4a16", "cpu")
    out = tmp_path / "user.json"
    result = run_pytest("benchmarks/test_generation.py", "--model-dir", str(user_dir), *SMALL,
                        f"--benchmark-json={out}", "-q")
    assert result.returncode == 0, result.stdout[-3000:]
    data = json.loads(out.read_text())
    formats = {b["extra_info"]["format"] for b in data["benchmarks"]}
    stated = {s["format"] for s in data["quantbench"]["states"]}
    assert formats | stated == {"ct-w4a16", "ct-w4a16-dequant", "ct-w4a16-nodispatch", "ct-w4a16-bare"}
    assert {"ct-w4a16", "ct-w4a16-dequant"} <= formats  # nodispatch and bare are stated unsupported on ct 0.10
    assert all(b["extra_info"]["model"].startswith("dir:") for b in data["benchmarks"])


@pytest.mark.stack_independent  # the harness's own loop around the model
@pytest.mark.timing
def test_harness_overhead_is_small(tiny_checkpoints, tmp_path):
    # A busy neighbour can slow either side for a whole measurement (on 2026-11-23 this VM ran whole
    # seconds at 1.3-2x the time); a real harness overhead shows up in every attempt, so the best of
    # up to five attempts is what is bounded. 100 rounds a side: 15 (0.4 s) fit inside one slow spell
    # and read 1.11, 1.19, 1.06 in CI; 100 a side read 0.94-1.07 here.
    ratios = []
    for attempt in range(5):
        out = tmp_path / f"overhead-{attempt}.json"
        result = run_pytest("benchmarks/test_overhead.py", "--qb-rounds", "100", f"--benchmark-json={out}", "-q")
        assert result.returncode == 0, result.stdout[-2000:]
        ratios.append(json.loads(out.read_text())["benchmarks"][0]["extra_info"]["harness_overhead_ratio"])
        if ratios[-1] < 1.05:
            break
    print(f"harness overhead ratios (min suite / min bare loop): {ratios}")
    assert min(ratios) < 1.05  # target <= 1.02


@pytest.mark.stack_independent  # the plugin's and the history's plumbing, not the libraries
def test_a_stored_run_leaves_no_scratch_copy_behind(tiny_checkpoints, tmp_path, monkeypatch):
    """--qb-history without --benchmark-json has pytest-benchmark write to a scratch folder: before,
    every such run left one in /tmp (185 of them on the dev machine)."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    result = run_pytest("benchmarks/test_generation.py", "--qb-models", "tiny", "--qb-formats", "bf16",
                        "--qb-batch", "1", "--qb-prompt", "16", "--qb-new-tokens", "4", "--qb-rounds", "2",
                        "-k", "decode", f"--qb-history={tmp_path / 'history'}", "-q")
    assert result.returncode == 0, result.stdout[-3000:]
    assert len(list((tmp_path / "history").glob("*/*.json"))) == 1
    assert [p.name for p in scratch.iterdir() if p.name.startswith("quantbench-")] == []


@pytest.mark.stack_independent  # the plugin's and the history's plumbing, not the libraries
def test_a_history_that_cannot_be_stored_fails_the_run_and_keeps_its_json(tiny_checkpoints, tmp_path):
    """The history is written at the very end: a full disk or a file in the way there must not lose
    the run (pytest-benchmark still writes --benchmark-json) nor pass quietly."""
    from quantbench import environment
    root = tmp_path / "history"
    root.mkdir()
    (root / environment.collect()["signature"]).write_text("a file where the signature folder goes")
    out = tmp_path / "bench.json"
    result = run_pytest("benchmarks/test_generation.py", "--qb-models", "tiny", "--qb-formats", "bf16",
                        "--qb-batch", "1", "--qb-prompt", "16", "--qb-new-tokens", "4", "--qb-rounds", "2",
                        f"--qb-history={root}", f"--benchmark-json={out}", "-q")
    assert result.returncode == 1, result.stdout[-3000:]
    assert "quantbench: history NOT saved" in result.stdout and f"--history {root} --add FILE" in result.stdout
    assert json.loads(out.read_text())["benchmarks"]


@pytest.mark.stack_independent  # the plugin's and the history's plumbing, not the libraries
def test_a_run_whose_every_case_is_unsupported_is_still_a_result(tmp_path):
    """pytest-benchmark writes nothing when no case was timed. On a machine without awq_ext, a run of
    the AutoAWQ CUDA formats is all "unsupported: why": that must reach the JSON, the history, the
    gate and the guide (once per case, however many runs the history holds), not only the terminal."""
    from .conftest import run_cli
    root, out = tmp_path / "history", tmp_path / "bench.json"
    args = ["benchmarks/test_generation.py", "--qb-models", "tiny", "--qb-formats", "awq-gemv",
            "--qb-batch", "1", "--qb-prompt", "16", f"--qb-history={root}", "-q"]
    for extra in ([f"--benchmark-json={out}"], []):
        result = run_pytest(*args, *extra)
        assert result.returncode == 0, result.stdout[-3000:]
        assert "quantbench: history saved to" in result.stdout
    written = json.loads(out.read_text())
    assert written["benchmarks"] == [] and written["machine_info"]["quantbench"]["signature"]
    assert {s["state"] for s in written["quantbench"]["states"]} == {"unsupported"}
    assert len(written["quantbench"]["states"]) == 2  # prefill and decode
    assert len(list(root.glob("*/*_*.json"))) == 2
    gate = run_cli("gate", "--current", "latest", "--baseline", "latest", "--history", str(root))
    assert gate.returncode == 0 and "passed {'unsupported': 2}" in gate.stdout, gate.stdout + gate.stderr
    report = run_cli("report", "--history", str(root), "--out", str(tmp_path / "reports"))
    assert report.returncode == 0, report.stdout + report.stderr
    guide = next((tmp_path / "reports").glob("*/README.md")).read_text()
    lines = [" ".join(line.split()) for line in guide.split("## Not measured here, and why")[1].splitlines()]
    assert any(line.startswith("| unsupported | WQLinear_GEMV has no CPU path") and line.endswith("| 2 |")
               for line in lines), lines


@pytest.mark.stack_independent  # the plugin's and the history's plumbing, not the libraries
def test_a_run_past_its_deadline_ends_cleanly_with_its_json_history_and_the_cases_it_did_not_reach(tiny_checkpoints,
                                                                                                   tmp_path):
    """A GPU runner kills a command at its limit, and pytest-benchmark writes nothing until pytest ends: on
    3ae1c25 a stage cut there lost everything it measured. --qb-deadline ends the run itself: the case running
    then finishes, the rest are stated not-reached, the JSON and the history are written, the exit is clean."""
    root, out = tmp_path / "history", tmp_path / "bench.json"
    result = run_pytest("benchmarks/test_generation.py", "benchmarks/test_kernels.py", "-p", "tests.deadline_clock",
                        "--qb-models", "tiny", "--qb-formats", "bf16", "--qb-batch", "1,2", "--qb-prompt", "16",
                        "--qb-new-tokens", "4", "--qb-rounds", "2", "--qb-kernels", "torch-fp16", "--qb-m", "1",
                        "--qb-deadline", "600", "--qb-progress", "0.001", f"--qb-history={root}",
                        f"--benchmark-json={out}", "-q")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    written = json.loads(out.read_text())
    assert len(written["benchmarks"]) == 1 and written["benchmarks"][0]["extra_info"]["state"] == "ok"
    states = written["quantbench"]["states"]
    assert states and {s["state"] for s in states} == {"not-reached"}
    assert any(s.get("suite") == "kernels" for s in states) and any(s.get("batch") == 2 for s in states)
    assert all(s["reason"].startswith("not reached: --qb-deadline 600 s passed") for s in states)
    assert f"{len(states)} case(s) not run, stated not-reached" in result.stdout
    # the progress line after the case that ran (printed outside its captured output: written from its teardown,
    # it was swallowed) and at the end, where the cases passed over at the deadline count as done
    total = 1 + len(states)
    assert f"quantbench: 1/{total} cases ({100 / total:.0f}%)" in result.stdout, result.stdout[-3000:]
    assert f"quantbench: {total}/{total} cases (100%)" in result.stdout
    assert len(list(root.glob("*/*.json"))) == 1 and "quantbench: history saved to" in result.stdout


@pytest.mark.stack_independent  # the plugin's and the history's plumbing, not the libraries
def test_a_killed_run_keeps_every_case_it_finished(tiny_checkpoints, tmp_path):
    """pytest-benchmark writes its JSON when pytest ends: a runner's command limit (SIGKILL) lost everything a
    command had measured (3ae1c25). Each case is journaled as it ends; the journal of a run that never ended is
    listed by `quantbench history` and stored by `--add` as the run of its finished cases, marked interrupted with
    the cases it did not reach. A run that ends removes its journal."""
    import signal
    import subprocess
    import sys
    import time

    from .conftest import REPO, run_cli
    root, out = tmp_path / "history", tmp_path / "bench.json"
    args = ["benchmarks/test_generation.py", "--qb-models", "tiny", "--qb-formats", "bf16", "--qb-batch", "1,2,4",
            "--qb-prompt", "16", "--qb-new-tokens", "4", "--qb-rounds", "2", "-q"]
    done = run_pytest(*args, f"--benchmark-json={out}")
    assert done.returncode == 0 and out.is_file() and not list(tmp_path.glob("*.journal.jsonl")), done.stdout[-2000:]
    # the same run, killed once its first case is journaled (its JSON in a scratch folder: the journal in the
    # history folder's .journals/)
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args, f"--qb-history={root}"],
                           cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    journals = []
    while time.monotonic() < deadline and run.poll() is None:
        journals = list(root.glob(".journals/*.journal.jsonl"))
        if journals and '"kind": "case"' in journals[0].read_text():
            break
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert journals, "no journal was written"
    listed = run_cli("history", "--history", str(root))
    assert "a run that never ended" in listed.stdout and "--add" in listed.stdout, listed.stdout
    added = run_cli("history", "--history", str(root), "--add", str(journals[0]))
    assert added.returncode == 0 and "stored as" in added.stdout, added.stdout + added.stderr
    (stored,) = root.glob("*/*.json")
    payload = json.loads(stored.read_text())
    assert payload["benchmarks"] and all(b["extra_info"]["state"] == "ok" for b in payload["benchmarks"])
    interrupted = payload["quantbench"]["interrupted"]
    assert len(payload["benchmarks"]) + len(interrupted["not_reached"]) == 6  # 3 batches x prefill, decode
    assert not journals[0].exists()  # stored: no longer listed as a run that never ended


@pytest.mark.stack_independent  # the plugin's and the history's plumbing, not the libraries
def test_a_batch_the_host_cannot_hold_is_an_oom_state(tiny_checkpoints, tmp_path):
    """T07: --qb-batch 1000000000 on a CPU was a raw torch allocator error per case, nothing recorded."""
    out = tmp_path / "bench.json"
    done = run_pytest("benchmarks/test_generation.py", "--qb-models", "tiny", "--qb-formats", "bf16", "--qb-batch",
                      "1000000000", "--qb-prompt", "16", "--qb-new-tokens", "4", "--qb-rounds", "2",
                      f"--benchmark-json={out}", "-q")
    assert done.returncode == 0, done.stdout[-3000:]
    states = json.loads(out.read_text())["quantbench"]["states"]
    assert {s["state"] for s in states} == {"oom"} and len(states) == 2
    assert all("the host could not allocate what tiny-bf16-transformers-b1000000000" in s["reason"] for s in states)


@pytest.mark.stack_independent  # the plugin's and the history's plumbing, not the libraries
def test_a_prompt_longer_than_the_models_positions_is_invalid_input(tiny_checkpoints, tmp_path):
    """T08: --qb-prompt 5000 on a model of 4096 positions was measured and stored as valid."""
    out = tmp_path / "bench.json"
    done = run_pytest("benchmarks/test_generation.py", "--qb-models", "tiny", "--qb-formats", "bf16", "--qb-batch",
                      "1", "--qb-prompt", "5000", "--qb-new-tokens", "4", "--qb-rounds", "2", "-k", "prefill",
                      f"--benchmark-json={out}", "-q")
    assert done.returncode == 1, done.stdout[-3000:]
    (state,) = json.loads(out.read_text())["quantbench"]["states"]
    assert state["state"] == "invalid-input" and "need 5004 positions; tiny has 4096" in state["reason"]
    assert "Fix: lower --qb-prompt" in state["reason"]


@pytest.mark.stack_independent  # the plugin's and the history's plumbing, not the libraries
def test_ctrl_c_keeps_the_finished_cases_and_marks_the_run_interrupted(tiny_checkpoints, tmp_path):
    """T40: Ctrl-C after 3 of 8 cases gave a 90-line traceback inside pytest-benchmark ("min() arg is an empty
    sequence": the case cut inside its rounds), the measured cases were discarded and the run was not marked
    interrupted. Now the cut case is left out, the JSON (written atomically) and the history keep the rest."""
    import signal
    import subprocess
    import sys
    import time

    from .conftest import REPO
    root, out = tmp_path / "history", tmp_path / "bench.json"
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "benchmarks/test_generation.py",
                            "--qb-models", "tiny", "--qb-formats", "bf16", "--qb-batch", "1,2,4,8",
                            "--qb-prompt", "16", "--qb-new-tokens", "16", "--qb-rounds", "20",
                            f"--qb-history={root}", f"--benchmark-json={out}", "-q"],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and run.poll() is None:
        journal = next(iter(root.glob(".journals/*.journal.jsonl")), None)  # where `quantbench history` finds it
        if journal is not None and journal.read_text().count('"kind": "case"') >= 2:
            break
        time.sleep(0.02)
    run.send_signal(signal.SIGINT)
    output = run.communicate(timeout=300)[0]
    assert "min() arg is an empty sequence" not in output and "Traceback" not in output, output[-3000:]
    written = json.loads(out.read_text())
    assert "interrupted" in written["quantbench"], (len(written["benchmarks"]), run.returncode, output[-3000:])
    section = written["quantbench"]["interrupted"]
    assert section["reason"].startswith("interrupted by Ctrl-C")
    done = [b for b in written["benchmarks"] if b["extra_info"].get("state") == "ok"]
    # a case stopped after some of its rounds is in pytest-benchmark's JSON, stated interrupted (its partial times
    # are no result); one stopped inside its first is left out of it (`cut_off`)
    cut = [b for b in written["benchmarks"] if b["extra_info"].get("state") == "interrupted"]
    assert len(done) >= 2 and all(b["stats"]["rounds"] == 20 for b in done)
    assert len(done) + len(cut) + len(section["cut_off"]) + len(section["not_reached"]) == 8, section
    assert len(list(root.glob("*/*.json"))) == 1 and journal is not None and not journal.exists()
    assert not list(tmp_path.glob(".bench.json.*.tmp"))  # the atomic write left no temp file


@pytest.mark.stack_independent
def test_a_benchmark_json_that_cannot_be_written_is_one_line_and_no_half_file(tmp_path):
    """T36: pytest-benchmark's save_json on a full disk raised ENOSPC mid-write and left 8192 bytes of JSON. The
    write goes to a temp file beside it and is renamed whole; a failed write is a warning naming the path."""
    from types import SimpleNamespace

    from quantbench.bench.saving import atomic_save_json
    said = []
    logger = SimpleNamespace(warning=said.append, info=lambda *a, **k: None)
    good = SimpleNamespace(json=tmp_path / "run.json", logger=logger)
    atomic_save_json(good, {"benchmarks": [1, 2]})
    assert json.loads((tmp_path / "run.json").read_text()) == {"benchmarks": [1, 2]} and not said
    (tmp_path / "file").write_text("")
    bad = SimpleNamespace(json=tmp_path / "file" / "run.json", logger=logger)  # its folder is a file: ENOTDIR
    atomic_save_json(bad, {"benchmarks": []})
    (line,) = said
    assert line.startswith(f"quantbench: --benchmark-json {tmp_path / 'file' / 'run.json'} NOT written (")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "run.json"]  # no temp file left


@pytest.mark.stack_independent
def test_a_ctrl_c_that_a_finalizer_swallowed_still_stops_the_run(tmp_path):
    """Python prints and drops a KeyboardInterrupt raised inside a __del__ (a garbage collection a torch op ran when
    Ctrl-C came): before, the run went on to its end as if nothing was pressed and its JSON had no `interrupted`
    section (seen once in CI in the T40 test). Now the next case does not start and the run is marked."""
    import subprocess
    import sys
    (tmp_path / "test_three.py").write_text(
        "import signal\n\n"
        "class Finalized:\n"
        "    def __del__(self):\n"
        "        signal.raise_signal(signal.SIGINT)  # the handler runs inside __del__: Python swallows it\n\n"
        "def test_one():\n    pass\n\n"
        "def test_two():\n    Finalized()\n\n"
        "def test_three():\n    open('reached', 'w').close()\n")
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "quantbench.plugin", "-p", "no:cacheprovider",
                          "test_three.py", "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         check=False)
    assert "Exception ignored" in run.stderr + run.stdout  # the premise: Python did swallow it
    assert not (tmp_path / "reached").exists(), run.stdout[-2000:]
    assert run.returncode == 2, run.stdout[-2000:]  # pytest's INTERRUPTED
