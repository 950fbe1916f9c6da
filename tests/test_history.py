"""History files: atomic, concurrent-safe writes; clear errors for every bad file, files untouched."""

import hashlib
import json
import multiprocessing
import os

import pytest

from quantbench import gate, history
from quantbench.errors import BadHistory


def payload(signature="sig-a", gpu="H100", value=0.01, n=5, torch="2.11", **info):
    """One run of one measured case (plus one unsupported); ``info`` adds to the case's extra_info."""
    return {
        "machine_info": {"quantbench": {"signature": signature, "device": {"gpu": gpu, "cpu": "x"},
                                        "versions": {"torch": torch, "transformers": "5.17.0"}}},
        "commit_info": {"id": "abc1234567", "dirty": False},
        "datetime": "2026-11-22T00:00:00",
        "benchmarks": [{"name": "test_generation[tiny-bf16-b1-p32-decode]",
                        "fullname": "benchmarks/test_generation.py::test_generation[tiny-bf16-b1-p32-decode]",
                        "stats": {"median": value, "data": [value * (1 + 0.001 * i) for i in range(n)],
                                  "rounds": n},
                        "extra_info": {"model": "tiny", "format": "bf16", "phase": "decode", "batch": 1,
                                       "rate_metrics": {"decode_tokens_per_s": 32}, "time_metrics": [],
                                       "peak_memory_bytes": 1000, **info}}],
        "quantbench": {"schema_version": history.SCHEMA_VERSION, "states": [
            {"case": "tiny-awq-gemv-b1-p32-decode", "nodeid": "b.py::test_generation[tiny-awq-gemv-b1-p32-decode]",
             "state": "unsupported", "reason": "needs awq_ext", "format": "awq-gemv"}]},
    }


def test_save_and_load_round_trip(tmp_path):
    path = history.save_run(tmp_path, payload())
    assert path.parent.name == "sig-a" and history.load_run(path)["commit_info"]["id"] == "abc1234567"
    frame = history.load_frame([path])
    assert set(frame["state"]) == {"ok", "unsupported"}
    ok = history.filter_frame(frame, format="bf16", metric="decode_tokens_per_s")
    assert len(ok) == 1 and ok.iloc[0]["median_s"] == 0.01


def _writer(args):
    root, i = args
    return str(history.save_run(root, payload(value=0.01 + i * 1e-4)))


def test_concurrent_writers_never_lose_or_corrupt(tmp_path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        paths = pool.map(_writer, [(str(tmp_path), i) for i in range(24)])
    assert len(set(paths)) == 24
    files = history.run_files(tmp_path, "sig-a")
    assert len(files) == 24 and all(history.load_run(f) for f in files)
    assert not [p for p in (tmp_path / "sig-a").iterdir() if p.name.startswith(".")]  # no temp files left


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        history.write_atomic(tmp_path / "x.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("content,message", [
    ('{"benchmarks": [1, 2', "truncated JSON"),
    ('{"benchmarks": [{"name": "test_gen', "truncated JSON"),  # cut inside a string
    ('{"benchmarks": [}', "corrupt JSON"),
    ("", "empty file"),
    ('{"benchmarks": [], "quantbench": {"schema_version": 0}}', "old schema version 0"),
    ('{"benchmarks": [], "machine_info": {}}', "no quantbench schema version"),
    ('[1, 2, 3]', "not a pytest-benchmark JSON file"),
])
def test_bad_files_are_named_and_left_unchanged(tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    before = _digest(bad)
    with pytest.raises(BadHistory) as info:
        history.load_run(bad)
    assert str(bad) in info.value.line() and message in info.value.line() and "Fix:" in info.value.line()
    assert _digest(bad) == before


def test_an_indented_file_cut_anywhere_on_its_last_line_is_truncated_and_a_fault_before_it_corrupt(tmp_path):
    text = json.dumps(payload(), indent=4)
    cut = tmp_path / "cut.json"
    for end in ('"dirty": fal', '"rounds": 5', '"signature": "sig-a"'):
        cut.write_text(text[:text.index(end) + len(end)])
        with pytest.raises(BadHistory, match="truncated JSON"):
            history.load_run(cut)
    cut.write_text(text.replace('"rounds": 5', '"rounds": 5,,'))
    with pytest.raises(BadHistory, match="corrupt JSON"):
        history.load_run(cut)


def test_one_damaged_file_in_a_history_folder_is_named_and_the_rest_still_read(tmp_path):
    """An interrupted copy or a bad cache restore must not stop every later list, report and nightly
    gate: the file is named with its fix, left in place, and the other runs are read. A file named
    explicitly (--baseline PATH, --current) still fails."""
    import shutil

    from .conftest import REPO, run_cli
    committed = next((REPO / "reports" / "history").glob("intel-*-current-*"))
    root = tmp_path / "history"
    shutil.copytree(committed, root / committed.name)
    good = history.run_files(root)[-1]
    damaged = good.with_name("99991231T000000000000_deadbeef_00000000.json")  # the newest name
    damaged.write_text(good.read_text()[:5000])
    before = _digest(damaged)
    tonight = history.load_run(good)
    tonight["datetime"], tonight["commit_info"]["id"] = "2026-11-24T03:00:00", "f" * 40
    assert gate.resolve_baselines("latest", root, tonight, None) == [good]
    listed = run_cli("history", "--history", str(root))
    assert listed.returncode == 0 and good.name in listed.stdout and damaged.name not in listed.stdout
    assert f"quantbench history: skipped {damaged}: truncated JSON" in listed.stderr
    rendered = run_cli("report", "--history", str(root), "--out", str(tmp_path / "reports"))
    assert rendered.returncode == 0 and f"quantbench report: skipped {damaged}" in rendered.stderr
    assert (tmp_path / "reports" / committed.name / "README.md").is_file()
    current = tmp_path / "tonight.json"
    current.write_text(json.dumps(tonight))
    named = run_cli("gate", "--current", str(current), "--baseline", str(damaged))
    assert named.returncode == 2 and f"{damaged}: truncated JSON" in named.stderr
    assert _digest(damaged) == before


def test_history_add_stores_a_run_where_it_was_measured_and_only_once(tmp_path):
    from .conftest import run_cli
    root = tmp_path / "history"
    newer = history.save_run(root, _night("2026-11-22T03:00:00+00:00"))
    older = tmp_path / "older.json"
    older.write_text(json.dumps(_night("2026-11-21T03:00:00+00:00")))
    added = run_cli("history", "--history", str(root), "--add", str(older))
    assert added.returncode == 0 and f"{older}: stored as" in added.stdout
    stored = [p for p in history.run_files(root) if p != newer]
    assert [p.name[:15] for p in stored] == ["20261121T030000"]  # named by its own start time
    # so 'latest' for a later run still lists them oldest first, the added one before the newer one
    assert gate.resolve_baselines("latest", root, _night("2026-11-23T03:00:00"), None) == [stored[0], newer]
    again = run_cli("history", "--history", str(root), "--add", str(older))
    assert again.returncode == 0 and f"{older}: already stored as {stored[0]}" in again.stdout
    assert len(history.run_files(root)) == 2
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    refused = run_cli("history", "--history", str(root), "--add", str(broken))
    assert refused.returncode == 2 and f"{broken}: truncated JSON" in refused.stderr


@pytest.mark.parametrize("option,message", [
    (["--fail-on", "regresed"], "--fail-on 'regresed': unknown gate state(s) 'regresed'. Fix: use some of: regressed"),
    (["--baseline-runs", "0"], "argument --baseline-runs: must be an integer >= 1, got '0'"),
    (["--confirm-rerun", "-1"], "argument --confirm-rerun: must be an integer >= 0, got '-1'"),
])
def test_gate_options_that_could_never_fail_or_find_nothing_are_usage_errors(tmp_path, option, message):
    from .conftest import run_cli
    current = history.save_run(tmp_path, payload())
    result = run_cli("gate", "--current", str(current), "--baseline", str(current), *option)
    assert result.returncode == 2 and message in result.stderr


def test_current_latest_is_the_newest_run_of_any_stack(tmp_path):
    """`quantbench gate --current latest` on a history with two stacks: the run made last, not the
    newest of the folder that sorts last ('...-legacy-...' after '...-current-...')."""
    legacy = history.save_run(tmp_path, payload(signature="intel-legacy-1"))
    current = history.save_run(tmp_path, payload(signature="intel-current-2"))
    assert history.latest_run(tmp_path) == current
    assert history.latest_run(tmp_path, "intel-legacy-1") == legacy


def test_empty_baseline_folder(tmp_path):
    with pytest.raises(BadHistory, match="empty baseline folder"):
        gate.resolve_baselines("latest", tmp_path, payload(), None)


def _night(when: str, value: float = 0.01) -> dict:
    run = payload(value=value)
    run["datetime"] = when
    return run


def test_latest_baseline_never_holds_the_run_being_gated(tmp_path):
    """`nox -s nightly`: the run is in the history already when its --benchmark-json is gated against
    'latest'. Baselines are the newest earlier runs, the run itself never among them."""
    nights = [_night(f"2026-11-2{i}T03:00:00") for i in range(5)]
    saved = [history.save_run(tmp_path, night) for night in nights]
    tonight = json.loads(json.dumps(nights[-1]))  # the benchmark JSON: same run, another file
    tonight["quantbench"]["telemetry_end"] = []
    assert gate.resolve_baselines("latest", tmp_path, tonight, tmp_path / "results" / "bench.json") == saved[1:4]
    assert gate.resolve_baselines("latest", tmp_path, tonight, saved[-1], runs=2) == saved[2:4]
    # a merge of the last two nights: neither of them is its baseline; a combination likewise
    merged = history.merge_runs(nights[-2:])
    assert history.run_ids(merged) == history.run_ids(nights[-2]) | history.run_ids(nights[-1])
    assert gate.resolve_baselines("latest", tmp_path, merged, None) == saved[0:3]
    assert gate.resolve_baselines("latest", tmp_path, history.combine_runs(nights[-2:]), None) == saved[0:3]
    with pytest.raises(BadHistory, match="holds only this run"):
        gate.resolve_baselines("latest", tmp_path / "one", tonight, history.save_run(tmp_path / "one", tonight))


def _stack(when: str, transformers: str, stack: str = "current", gpu: str = "H100", value: float = 0.01) -> dict:
    run = _night(when, value)
    qb = run["machine_info"]["quantbench"]
    qb["device"]["gpu"] = gpu
    qb["versions"].update(transformers=transformers, stack=stack)
    qb["signature"] = f"{gpu}-{stack}-{transformers}"
    return run


def test_previous_baseline_is_the_stack_an_upgrade_replaced(tmp_path):
    """The night after `transformers` 5.17 -> 5.23: 'latest' has nothing to compare with, 'previous'
    takes the newest runs of the stack it replaced on this hardware, never another stack or GPU."""
    old = [history.save_run(tmp_path, _stack(f"2026-11-2{i}T03:00:00", "5.17.0")) for i in range(3)]
    history.save_run(tmp_path, _stack("2026-11-23T04:00:00", "4.51.3", stack="legacy"))  # newer, other stack
    history.save_run(tmp_path, _stack("2026-11-23T05:00:00", "5.17.0", gpu="A100"))      # newer, other GPU
    upgraded = _stack("2026-11-24T03:00:00", "5.23.0", value=0.0125)  # and 20% slower
    saved = history.save_run(tmp_path, upgraded)
    with pytest.raises(BadHistory, match="no earlier run"):
        gate.resolve_baselines("latest", tmp_path, upgraded, saved)
    paths = gate.resolve_baselines("previous", tmp_path, upgraded, saved, runs=2)
    assert paths == old[1:]
    baselines = [history.load_run(p) for p in paths]
    assert gate.crosses_upgrade("previous", upgraded, baselines)
    result = gate.run_gate(upgraded, baselines, _thresholds(), upgrade=True)
    assert "upgraded since the baseline" in result.machine_note and "5.17.0 -> 5.23.0" in result.machine_note
    assert result.exit_code == 1 and "regressed" in {d.state for d in result.decisions}
    # the next night of the new stack compares with the new stack again
    nxt = _stack("2026-11-25T03:00:00", "5.23.0")
    assert gate.resolve_baselines("previous", tmp_path, nxt, None) == [saved]
    assert not gate.crosses_upgrade("previous", nxt, [history.load_run(saved)])


def test_gate_cli_previous_and_a_first_night(tmp_path):
    from .conftest import run_cli
    history.save_run(tmp_path, _stack("2026-11-21T03:00:00", "5.17.0"))
    upgraded = _stack("2026-11-24T03:00:00", "5.23.0", value=0.0125)
    current = history.save_run(tmp_path, upgraded)
    out = run_cli("gate", "--current", str(current), "--baseline", "previous", "--history", str(tmp_path))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "comparing with the stack it replaced" in out.stdout and "5.17.0 -> 5.23.0" in out.stdout
    first = _stack("2026-11-24T03:00:00", "4.51.3", stack="legacy")
    alone = history.save_run(tmp_path, first)
    out = run_cli("gate", "--current", str(alone), "--baseline", "previous", "--history", str(tmp_path))
    assert out.returncode == 2 and "no earlier run" in out.stderr
    out = run_cli("gate", "--current", str(alone), "--baseline", "previous", "--history", str(tmp_path),
                  "--if-no-baseline", "pass")
    assert out.returncode == 0 and "nothing to compare with, passed" in out.stdout


def test_a_nightly_regression_is_not_diluted_by_comparing_the_run_with_itself(tmp_path):
    history.save_run(tmp_path, _night("2026-11-21T03:00:00"))
    slow = _night("2026-11-22T03:00:00", value=0.0125)  # 20% slower
    history.save_run(tmp_path, slow)
    baselines = [history.load_run(p) for p in gate.resolve_baselines("latest", tmp_path, slow, None)]
    decision = {(d.case, d.metric): d for d in gate.run_gate(slow, baselines, _thresholds()).decisions}[
        ("test_generation[tiny-bf16-b1-p32-decode]", "decode_tokens_per_s")]
    assert decision.state == "regressed" and decision.ratio == pytest.approx(0.8)


def test_baseline_from_another_machine_is_never_compared_silently():
    result = gate.run_gate(payload(), [payload(gpu="A100", torch="2.9")], _thresholds())
    assert {d.state for d in result.decisions} == {"incomparable"}
    assert "device.gpu: A100 -> H100" in result.machine_note and "versions.torch: 2.9 -> 2.11" in result.machine_note
    assert result.exit_code == 0
    assert gate.run_gate(payload(), [payload(gpu="A100")], _thresholds(), ("regressed", "incomparable")).exit_code


def _thresholds():
    from quantbench.gate import load_thresholds
    from quantbench.paths import THRESHOLDS
    return load_thresholds(THRESHOLDS)


def test_gate_states_and_markdown():
    slow = payload(value=0.02)
    result = gate.run_gate(slow, [payload(), payload()], _thresholds())
    states = {(d.case, d.metric): d.state for d in result.decisions}
    assert states[("test_generation[tiny-bf16-b1-p32-decode]", "decode_tokens_per_s")] == "regressed"
    assert result.exit_code == 1
    md = result.markdown()
    assert "performance regression" in md and "| regressed |" in md and "tiny-bf16-b1-p32-decode" in md
    # a case unsupported in both runs stays in the table, and the PR comment counts it instead of listing it
    assert states[("test_generation[tiny-awq-gemv-b1-p32-decode]", "*")] == "unsupported"
    assert "awq-gemv" not in md and "Stated in both runs (not listed): 1 unsupported" in md


def test_the_gate_names_a_kernel_the_baseline_did_not_run():
    """The night a library upgrade sends a format down another code path: the gate says which, in the
    table and the PR comment, and fails on it where asked."""
    def ran(kernel, value=0.01):
        return payload(value=value, kernel=kernel)
    case = "test_generation[tiny-bf16-b1-p32-decode]"
    result = gate.run_gate(ran("naive-dequant", 0.02), [ran("triton.awq_gemm"), ran("triton.awq_gemm")],
                             _thresholds())
    by_key = {(d.case, d.metric): d for d in result.decisions}
    assert by_key[(case, "kernel")].state == "kernel-changed"
    assert by_key[(case, "kernel")].note == "baseline ran triton.awq_gemm; this run ran naive-dequant"
    assert "the kernel changed" in by_key[(case, "decode_tokens_per_s")].note
    assert "| kernel-changed |" in result.markdown() and "this run ran naive-dequant" in result.markdown()
    same = gate.run_gate(ran("triton.awq_gemm"), [ran("triton.awq_gemm")], _thresholds(),
                           ("regressed", "kernel-changed"))
    assert "kernel-changed" not in same.counts() and same.exit_code == 0
    assert gate.run_gate(ran("naive-dequant"), [ran("triton.awq_gemm")], _thresholds(),
                           ("regressed", "kernel-changed")).exit_code == 1
    assert gate.run_gate(ran("naive-dequant"), [ran("triton.awq_gemm")], _thresholds()).exit_code == 0


def test_a_quantized_format_that_comes_to_hold_dense_weights_regresses_even_on_cpu():
    """The seed's failure as a regression: the night an upgrade makes int4 weights decompress on the
    first forward, the resident weight bytes grow 2.3x. Exact bytes: caught on a CPU runner too,
    where any timing metric of one case needs a 40% change; a 0.5% buffer is no regression."""
    def holding(weight_bytes, gpu=None):
        return payload(gpu=gpu, weight_bytes_after_first_forward=weight_bytes)
    key = ("test_generation[tiny-bf16-b1-p32-decode]", "weight_bytes_after_first_forward")
    for gpu in (None, "H100"):
        baseline = [holding(1_930_208, gpu)]
        dense = {(d.case, d.metric): d for d in gate.run_gate(holding(4_486_112, gpu), baseline,
                                                                _thresholds()).decisions}[key]
        assert dense.state == "regressed" and dense.ratio == pytest.approx(2.324, abs=1e-3)
        buffer = {(d.case, d.metric): d for d in gate.run_gate(holding(1_940_000, gpu), baseline,
                                                                 _thresholds()).decisions}[key]
        assert buffer.state == "unchanged"


def test_the_pr_comment_says_each_kernel_change_once():
    from quantbench import gate
    moved = "baseline ran triton.awq_gemm; this run ran naive-dequant"
    decisions = [gate.Decision("a", "tps", "regressed", 0.5, 0.01, 2.0, 1.0, 0.05)]
    decisions += [gate.Decision(f"awq-b{b}", "kernel", "kernel-changed", note=moved) for b in (1, 2, 4)]
    decisions += [gate.Decision("hf-b1", "kernel", "kernel-changed", note="baseline ran Marlin; this run ran torch"),
                  gate.Decision("z", "ttft_s", "improved", 1.2, 0.01, 1.0, 1.2, 0.05)]
    result = gate.GateResult(decisions, 1, "")
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in result.markdown().splitlines()
            if line.startswith("| ") and not line.startswith("| state")]
    assert [(r[0], r[1]) for r in rows] == [("regressed", "a"), ("kernel-changed", "awq-b1 and 2 more"),
                                            ("kernel-changed", "hf-b1"), ("improved", "z")]
    assert "**4** kernel-changed" in result.markdown() and result.table().count("kernel-changed") == 4


def test_the_pr_comment_fits_githubs_limit_when_everything_regressed():
    """A global slowdown over the GPU matrix: ~2,000 regressed rows would make a 400 KB comment that
    GitHub refuses (65,536 characters), and the PR would hear nothing. The worst rows are listed, the
    rest counted; the full table stays in the job log."""
    from quantbench import gate
    decisions = [gate.Decision(f"test_generation[qwen2.5-3b-fmt{i % 12}-b{i % 7}-p{i}-decode]", "decode_tokens_per_s",
                               "regressed", 0.8, 0.001, 100.0, 80.0, 0.05, "tested on run medians (4 vs 4 runs)")
                 for i in range(2000)]
    result = gate.GateResult(decisions, 1, "upgraded since the baseline (--baseline previous): "
                               "versions.transformers: 5.17.0 -> 5.23.0")
    md = result.markdown()
    assert len(md) <= gate.MARKDOWN_MAX_CHARS and "**2000** regressed" in md and "5.17.0 -> 5.23.0" in md
    listed = [line for line in md.splitlines() if line.startswith("| regressed")]
    assert 100 < len(listed) < 2000 and f"... and {2000 - len(listed)} more rows" in md
    assert decisions[0].case in listed[0]
    assert "more rows" not in gate.GateResult(decisions[:10], 1, "").markdown()
    assert result.table().count("| regressed") == 0 and result.table().count("regressed") == 2000


def test_the_gate_reads_the_device_kind_from_the_run():
    """A 20% slower case: past the 5% bound of a GPU run, within the CPU runs' per-case noise bound."""
    case = ("test_generation[tiny-bf16-b1-p32-decode]", "decode_tokens_per_s")
    for gpu, state in (("H100", "regressed"), (None, "unchanged")):
        assert history.device_kind(payload(gpu=gpu)) == ("gpu" if gpu else "cpu")
        result = gate.run_gate(payload(gpu=gpu, value=0.0125), [payload(gpu=gpu)], _thresholds())
        assert {(d.case, d.metric): d.state for d in result.decisions}[case] == state


def test_export_github_action_benchmark(tmp_path):
    from quantbench.gate.export import write_github_action_benchmark
    paths = write_github_action_benchmark(payload(), _thresholds(), tmp_path)
    bigger = json.loads((tmp_path / "customBiggerIsBetter.json").read_text())
    smaller = json.loads((tmp_path / "customSmallerIsBetter.json").read_text())
    assert len(paths) == 2
    assert bigger[0]["unit"] == "tokens/s" and bigger[0]["value"] == pytest.approx(32 / 0.01002, rel=1e-3)
    assert smaller[0]["name"].endswith("peak_memory_bytes")


def test_combine_runs_takes_each_case_from_the_newest_measurement():
    first = payload(value=0.01)
    first["datetime"] = "2026-11-22T00:00:00"
    second = payload(value=0.02)
    second["datetime"] = "2026-11-22T01:00:00"
    # the second run measured the case the first could not, and was cut off inside another
    second["benchmarks"][0]["name"] = "test_generation[tiny-awq-gemv-b1-p32-decode]"
    second["benchmarks"].append({"name": "test_generation[tiny-bf16-b1-p32-decode]", "stats": {"median": 9.0,
                                                                                             "data": [9.0]}})
    second["quantbench"]["states"] = []
    combined = history.combine_runs([second, first])
    by_name = {b["name"]: b for b in combined["benchmarks"]}
    assert by_name["test_generation[tiny-bf16-b1-p32-decode]"]["stats"]["median"] == 0.01  # interrupted never wins
    assert by_name["test_generation[tiny-awq-gemv-b1-p32-decode]"]["stats"]["median"] == 0.02
    assert combined["quantbench"]["states"] == []  # the stated case was measured later
    assert [r["datetime"] for r in combined["quantbench"]["combined_from"]] == [first["datetime"], second["datetime"]]
    # as the plugin now writes a cut-off case: marked, and still never winning
    third = payload(value=0.03)
    third["datetime"] = "2026-11-22T02:00:00"
    third["benchmarks"][0]["extra_info"] = {"state": "interrupted", "reason": history.INTERRUPTED_REASON}
    again = {b["name"]: b for b in history.combine_runs([first, third])["benchmarks"]}
    assert again["test_generation[tiny-bf16-b1-p32-decode]"]["stats"]["median"] == 0.01
    with pytest.raises(ValueError, match="different machine signatures"):
        history.combine_runs([first, payload(signature="sig-b")])


def test_a_case_cut_off_inside_its_rounds_is_interrupted_not_ok(tmp_path):
    run = payload()
    run["benchmarks"].append({"name": "test_generation[tiny-fp16-b1-p32-decode]", "stats": {"median": 1.0,
                                                                                          "data": [1.0]}})
    frame = history.run_frame(run)
    row = frame[frame["name"] == "test_generation[tiny-fp16-b1-p32-decode]"].iloc[0]
    assert row["state"] == "interrupted" and "cut off" in row["reason"]


def test_merged_runs_keep_their_run_medians_for_the_gate():
    name, metric = "test_generation[tiny-bf16-b1-p32-decode]", "decode_tokens_per_s"
    runs = [payload(value=0.01 * (1 + 0.01 * i)) for i in range(4)]
    cut_off = payload(value=5.0)
    cut_off["benchmarks"][0]["extra_info"] = {"state": "interrupted", "reason": history.INTERRUPTED_REASON}
    merged = history.merge_runs([*runs[:2], cut_off, *runs[2:]])
    bench = merged["benchmarks"][0]
    assert bench["stats"]["rounds"] == 20 and max(bench["stats"]["data"]) < 1.0  # cut-off times stay out
    sample = gate.samples(merged)[(name, metric)]
    expected = [32 / (0.01 * (1 + 0.01 * i) * 1.002) for i in range(4)]  # each run's median round
    assert sample.runs == pytest.approx(expected) and len(sample.rounds) == 20
    # a merge of merges keeps the individual runs, and merged baselines bring theirs along
    again = history.merge_runs([history.merge_runs(runs[:2]), history.merge_runs(runs[2:])])
    assert gate.samples(again)[(name, metric)].runs == pytest.approx(expected)
    baseline = gate.merged_samples([merged, runs[0]])[(name, metric)]
    assert len(baseline.runs) == 5 and baseline.value == pytest.approx(sorted(baseline.runs)[2])
    # with 5 runs against 4 the gate tests run medians and says so
    decision = gate.run_gate(merged, [merged, runs[0]], _thresholds()).decisions
    case = next(d for d in decision if d.case == name and d.metric == metric)
    assert case.state == "unchanged" and "run medians (4 vs 5 runs)" in case.note


def test_runs_of_two_stacks_are_never_pooled(tmp_path):
    """`quantbench merge` of a legacy and a current run used to pool their rounds into one sample."""
    from .conftest import run_cli
    with pytest.raises(ValueError, match="different machine signatures cannot be merged"):
        history.merge_runs([payload(signature="sig-a"), payload(signature="sig-b")])
    files = [history.save_run(tmp_path, payload(signature=sig)) for sig in ("sig-a", "sig-b")]
    result = run_cli("merge", "--out", str(tmp_path / "m.json"), *map(str, files))
    assert result.returncode == 2 and "Fix: merge only repeats on one machine and stack" in result.stderr
    assert not (tmp_path / "m.json").exists()


def test_an_unwritable_out_is_one_line_and_leaves_no_file(tmp_path):
    from .conftest import run_cli
    run = history.save_run(tmp_path / "history", payload())
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_cli("merge", "--out", str(blocker / "m.json"), str(run))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"quantbench: error: {blocker}") and "Fix: pass a writable path" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "history"]


def test_paired_gate_needs_as_many_current_runs_as_baseline_runs(tmp_path):
    from .conftest import run_cli
    files = []
    for i in range(3):
        files.append(tmp_path / f"run{i}.json")
        files[-1].write_text(json.dumps(payload(value=0.01 * (1 + 0.01 * i))))
    merged = tmp_path / "merged.json"
    assert run_cli("merge", str(files[0]), str(files[1]), "--out", str(merged)).returncode == 0
    assert json.loads(merged.read_text())["quantbench"]["merged_from"] == 2
    wrong = run_cli("gate", "--paired", "--current", str(merged), "--baseline", ",".join(map(str, files)))
    assert wrong.returncode == 2 and f"{merged}: --paired needs" in wrong.stderr and "holds 2" in wrong.stderr
    right = run_cli("gate", "--paired", "--current", str(merged), "--baseline", ",".join(map(str, files[:2])))
    assert right.returncode == 0, right.stdout + right.stderr


def test_signature_names_gptqmodel_only_where_installed():
    from quantbench.environment import signature_of
    device = {"gpu": "NVIDIA H100 80GB HBM3", "gpu_count": 1, "driver": "580.159.04", "cuda": "13.0"}
    base = {"torch": "2.11.0", "transformers": "5.17.0", "autoawq": "0.2.9", "compressed-tensors": "0.20.0",
            "triton": "3.6.0", "stack": "current"}
    # The committed H100 history was written before gptqmodel joined the stack: its folder must not move.
    assert signature_of(device, {**base, "gptqmodel": None}) == "nvidia-h100-80gb-hbm3-current-9b2dbb38ba"
    with_gptq = signature_of(device, {**base, "gptqmodel": "7.5.0"})
    assert with_gptq != signature_of(device, base)  # its kernels changed: another signature
    assert with_gptq != signature_of(device, {**base, "gptqmodel": "7.6.0"})


def _schema_1_run(fmt="bf16+compile", value=0.01):
    """A run as quantbench wrote it before the runtime was an axis: '+compile' in the format name and
    the case id, the loading library in 'runtime'."""
    run = payload(value=value)
    old = f"tiny-{fmt}-b1-p32-decode"
    run["benchmarks"][0].update(name=f"test_generation[{old}]",
                                fullname=f"benchmarks/test_generation.py::test_generation[{old}]")
    run["benchmarks"][0]["extra_info"].update(format=fmt, runtime="transformers + torch.compile")
    run["quantbench"]["schema_version"] = 1
    run["quantbench"]["states"] = [{"case": f"tiny-{fmt}-b1-p32-prefill", "format": fmt, "phase": "prefill",
                                    "nodeid": f"b.py::test_generation[tiny-{fmt}-b1-p32-prefill]",
                                    "state": "unsupported", "reason": "prefill runs eager"}]
    return run


def test_a_schema_1_file_is_migrated_when_read_and_never_rewritten(tmp_path):
    path = history.save_run(tmp_path, _schema_1_run())
    before = path.read_bytes()
    run = history.load_run(path)
    assert path.read_bytes() == before
    assert run["quantbench"]["schema_version"] == history.SCHEMA_VERSION and run["quantbench"]["migrated_from"] == 1
    bench = run["benchmarks"][0]
    assert bench["name"] == "test_generation[tiny-bf16-transformers+compile-b1-p32-decode]"
    assert bench["fullname"].endswith("::test_generation[tiny-bf16-transformers+compile-b1-p32-decode]")
    info = bench["extra_info"]
    assert (info["format"], info["runtime"], info["library"]) == ("bf16", "transformers+compile",
                                                                  "transformers + torch.compile")
    state = run["quantbench"]["states"][0]
    assert state["case"] == "tiny-bf16-transformers+compile-b1-p32-prefill"
    assert state["runtime"] == "transformers+compile"
    assert history.load_run(history.save_run(tmp_path, _schema_1_run("bf16")))["benchmarks"][0]["name"] == (
        "test_generation[tiny-bf16-transformers-b1-p32-decode]")


def test_a_run_stored_before_the_runtime_axis_gates_case_by_case_against_one_after(tmp_path):
    old = _schema_1_run("bf16")
    old["quantbench"]["states"] = []
    old = history.load_run(history.save_run(tmp_path, old))
    new = payload(value=0.013)  # 30% slower, written the new way
    new["benchmarks"][0].update(name="test_generation[tiny-bf16-transformers-b1-p32-decode]")
    new["benchmarks"][0]["extra_info"]["runtime"] = "transformers"
    new["quantbench"]["states"] = []
    states = {(d.case, d.metric): d.state for d in gate.run_gate(new, [old], _thresholds()).decisions}
    assert states[("test_generation[tiny-bf16-transformers-b1-p32-decode]", "decode_tokens_per_s")] == "regressed"
    assert not [s for s in states.values() if s in ("new", "missing")]


def test_the_committed_history_loads_and_names_every_generation_case_with_its_runtime():
    from quantbench.paths import REPO_ROOT
    files = history.run_files(REPO_ROOT / "reports" / "history")
    assert len(files) == 6  # CPU current + legacy, H100 generation + kernels, CPU vllm (AVX2; AVX-512 with serving)
    served = 0
    for path in files:
        run = history.load_run(path)
        for bench in run["benchmarks"]:
            info = bench["extra_info"]
            if bench["name"].startswith("test_serving["):
                served += 1
                assert f"-{info['format']}-vllm-serve-c{info['concurrency']}-in" in bench["name"], bench["name"]
            elif bench["name"].startswith("test_generation[") and "format" in info:
                assert f"-{info['format']}-{info['runtime']}-b" in bench["name"], bench["name"]
                assert "+compile" not in info["format"]
            elif bench["name"].startswith("test_generation["):  # cut off inside its rounds: the name still moves
                assert history.case_state(bench) == "interrupted" and "-transformers-b" in bench["name"], bench["name"]
    assert served == 21  # seven checkpoint kinds at concurrency 1, 2, 4


def test_a_record_field_nobody_declared_fails_where_it_is_written():
    from quantbench.history import record
    assert record.declared({"format": "bf16", "decode_tokens_per_s": 1.0}, record.GENERATION)
    with pytest.raises(ValueError, match=r"undeclared record field\(s\) \['decode_tokens_per_sec'\]"):
        record.declared({"format": "bf16", "decode_tokens_per_sec": 1.0}, record.GENERATION)
    assert set(record.KERNEL) & {"tflops", "gbps", "path", "bits"} == {"tflops", "gbps", "path", "bits"}


# ----------------------------------------------------------------------------- sharded runs
class _Item:
    """A collected test item as bench/shards.py sees it."""

    def __init__(self, nodeid, case=None):
        from types import SimpleNamespace
        self.nodeid = nodeid
        self.callspec = SimpleNamespace(params={"qb_case": case} if case else {})


def _case(model, fmt, batch, phase):
    from types import SimpleNamespace
    return SimpleNamespace(source=SimpleNamespace(label=model), format=fmt, runtime="transformers",
                           id=f"{model}-{fmt}-transformers-b{batch}-p16-{phase}")


def test_shards_split_whole_models_the_same_way_every_time():
    from quantbench.bench.shards import deal, parse_shard
    cases = [_case("tiny", fmt, b, ph) for fmt in ("bf16", "fp16", "awq-gemm") for b in (1, 4)
             for ph in ("prefill", "decode")] + [_case("tiny", "ct-w4a16", 1, "decode")]
    items = [_Item(f"b.py::test_generation[{c.id}]", c) for c in cases]
    plans = []
    for index in (1, 2):
        shard = parse_shard(f"{index}/2", "night-7", {})
        keep, drop = shard.select(items)
        assert {i.nodeid for i in keep} | {i.nodeid for i in drop} == {i.nodeid for i in items}
        assert {i.nodeid for i in keep} == set(shard.record()["cases"][str(index)])
        plans.append(shard.record()["cases"])
    assert plans[0] == plans[1]  # every shard computes the same split
    for part in plans[0].values():  # a model x format stays in one shard
        formats = {n.split("-")[1] for n in part}
        assert all(n.split("-")[1] not in formats for other in plans[0].values() if other is not part for n in other)
    assert sorted(len(p) for p in plans[0].values()) == [5, 8]  # units of 4, 4, 4, 1: 4+4 | 4+1
    assert deal(["a", "b", "a", "c"], 3) == [1, 2, 1, 3]
    assert parse_shard(None, None, {}) is None
    assert parse_shard("1/2", None, {"GITHUB_RUN_ID": "99"}).group == "99"
    for bad, group in (("0/2", "g"), ("3/2", "g"), ("x", "g"), ("1/2", None)):
        with pytest.raises(Exception) as err:
            parse_shard(bad, group, {})
        assert "Fix:" in str(err.value)


def _shard(index, count, group="n1", value=0.01, when="2026-11-22T03:00:00"):
    run = payload(value=value)
    run["datetime"] = when
    run["benchmarks"][0]["name"] = f"test_generation[tiny-bf16-b1-p32-decode-s{index}]"
    plan = {str(i): [f"b.py::test_generation[tiny-bf16-b1-p32-decode-s{i}]"] for i in range(1, count + 1)}
    run["quantbench"]["shard"] = {"group": group, "index": index, "count": count, "cases": plan}
    return run


def test_a_group_of_shards_is_read_as_one_run_and_a_missing_shard_is_stated(tmp_path):
    store = history.FolderStore(tmp_path)
    whole = payload()
    whole["datetime"] = "2026-11-21T00:00:00"
    store.save(whole)
    paths = [store.save(_shard(i, 3, when=f"2026-11-22T03:0{i}:00"))[0] for i in (1, 2)]
    assert [history.group_of(p.name) for p in paths] == [("n1", 1, 3), ("n1", 2, 3)]
    units = history.units(store.runs(), store.name_of)
    assert [len(u) for u in units] == [1, 2]
    runs = history.collapse(history.read_all(store, store.runs()))
    assert len(runs) == 2 and runs[-1][0].startswith("group n1: ")
    group = runs[-1][1]
    assert history.section(group)["group"] == {"id": "n1", "shards": 3, "stored": [1, 2], "missing": [3]}
    assert {b["name"] for b in group["benchmarks"]} == {f"test_generation[tiny-bf16-b1-p32-decode-s{i}]"
                                                       for i in (1, 2)}
    [missing] = [s for s in history.states(group) if s["state"] == "missing"]
    assert missing["case"] == "test_generation[tiny-bf16-b1-p32-decode-s3]"
    assert missing["reason"].startswith("shard 3/3 of group n1 was not stored")
    decisions = gate.run_gate(group, [whole], _thresholds()).decisions
    assert not [d for d in decisions if d.state == "regressed"]
    assert [d.state for d in decisions if d.case.endswith("-s3]")] == ["missing"]


def _thresholds():
    from quantbench.gate import load_thresholds
    from quantbench.paths import THRESHOLDS
    return load_thresholds(THRESHOLDS)


def test_latest_skips_the_other_shards_of_this_run_and_counts_a_group_once(tmp_path):
    store = history.FolderStore(tmp_path)
    night1 = [store.save(_shard(i, 2, "n1", when=f"2026-11-21T03:0{i}:00"))[0] for i in (1, 2)]
    night2_other = store.save(_shard(2, 2, "n2", when="2026-11-22T03:02:00"))[0]
    me = _shard(1, 2, "n2", when="2026-11-22T03:01:00")
    mine = store.save(me)[0]
    assert gate.resolve_baselines("latest", store, me, mine, runs=1) == night1  # not n2's other shard
    assert night2_other not in gate.resolve_baselines("latest", store, me, mine, runs=3)


@pytest.mark.stack_independent
def test_a_gate_that_compared_nothing_fails_unless_told_it_may(tmp_path):
    """T28: a baseline from another machine printed NOT COMPARED and exited 0. T29b: --if-no-baseline pass with a
    misspelt --history passed without saying the folder is not there."""
    import json

    from .conftest import run_cli
    current, other = tmp_path / "cur.json", tmp_path / "other.json"
    current.write_text(json.dumps(payload()))
    other.write_text(json.dumps(payload(gpu="A100")))
    out = run_cli("gate", "--current", str(current), "--baseline", str(other))
    assert out.returncode == 1 and "NOT COMPARED" in out.stdout and "--allow-incomparable" in out.stdout, out.stdout
    assert run_cli("gate", "--current", str(current), "--baseline", str(other), "--if-no-baseline",
                   "pass").returncode == 0
    for extra in ([], ["--if-no-baseline", "pass"]):  # T29 said "no earlier run", T29b passed
        typo = run_cli("gate", "--current", str(current), "--baseline", "latest", "--history",
                       str(tmp_path / "hsitory"), *extra)
        assert typo.returncode == 2 and "no such history folder" in typo.stdout + typo.stderr, typo.stdout + typo.stderr


@pytest.mark.stack_independent
def test_history_reports_and_removes_the_temp_files_of_killed_writers(tmp_path):
    """T35: kill -9 while storing left hidden .<run>.json.*.tmp files that nothing reported or cleaned."""
    import os
    import time

    from .conftest import run_cli
    stored = history.save_run(tmp_path, payload())
    old = stored.parent / f".{stored.name}.abc123.tmp"
    old.write_text("")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    young = stored.parent / f".{stored.name}.def456.tmp"
    young.write_text("{")
    out = run_cli("history", "--history", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{old}: removed, the temp file of a history writer killed before it renamed it" in out.stdout
    assert f"{young}: a history writer's temp file" in out.stdout and "left in place" in out.stdout
    assert not old.exists() and young.exists() and stored.exists()
