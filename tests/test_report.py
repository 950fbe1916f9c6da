"""The guide built from a small fixed history: files, table numbers and findings."""

import pandas as pd
import pytest

from quantbench import history, report
from quantbench.gate import load_thresholds
from quantbench.paths import THRESHOLDS
from quantbench.report import findings, guide

MIB = 2**20
# decode tokens/s by (format, batch): ct-w4a16 is slower than bf16 everywhere (the seed's case),
# awq-gemm wins at batch 1 and 4 only, so quantization stops paying from batch 16.
DECODE = {("bf16", 1): 100.0, ("bf16", 4): 380.0, ("bf16", 16): 1400.0,
          ("awq-gemm", 1): 250.0, ("awq-gemm", 4): 500.0, ("awq-gemm", 16): 900.0,
          ("ct-w4a16", 1): 25.4, ("ct-w4a16", 4): 100.0, ("ct-w4a16", 16): 400.0,
          ("ct-w4a16-nodispatch", 1): 50.8, ("ct-w4a16-nodispatch", 4): 150.0, ("ct-w4a16-nodispatch", 16): 480.0,
          ("ct-w4a16-bare", 1): 76.2, ("ct-w4a16-bare", 4): 200.0, ("ct-w4a16-bare", 16): 560.0}
WEIGHTS = {"bf16": (100 * MIB, 100 * MIB, "torch.matmul[bfloat16]"),
           "awq-gemm": (28 * MIB, 28 * MIB, "awq_ext.gemm_forward_cuda"),
           "ct-w4a16": (27 * MIB, 101 * MIB, ("Linear [dense float16] -> torch.matmul, behind compressed-tensors "
                                              "offload dispatch on 33 modules")),
           "ct-w4a16-nodispatch": (27 * MIB, 101 * MIB, ("Linear [dense float16] -> torch.matmul, through "
                                                         "compressed-tensors' forward wrapper on 33 modules")),
           "ct-w4a16-bare": (27 * MIB, 101 * MIB, "Linear [dense float16] -> torch.matmul")}


def bench(fmt, batch, phase, tps, scale=1.0):
    new = 32
    seconds = batch * new / (tps * scale)
    load, after, kernel = WEIGHTS[fmt]
    metric = f"{phase}_tokens_per_s"
    return {"name": f"test_generation[m-{fmt}-b{batch}-p128-{phase}]", "fullname": "x", "group": "g",
            "stats": {"median": seconds, "data": [seconds] * 5, "rounds": 5},
            "extra_info": {"model": "m", "format": fmt, "batch": batch, "prompt_len": 128, "new_tokens": new,
                           "phase": phase, "state": "ok", metric: tps * scale, "kernel": kernel,
                           "bits": None if fmt == "bf16" else 4, "display_order": list(WEIGHTS).index(fmt),
                           "weight_bytes_after_load": load, "weight_bytes_after_first_forward": after,
                           "peak_memory_bytes": after + 10 * MIB, "peak_memory_kind": "cuda_max_allocated",
                           "disk_bytes": load, "load_s": 1.0, "rate_metrics": {metric: batch * new},
                           # as runner.py computes it: every weight read once per decode step
                           **({"decode_weight_gbps": after * new / seconds / 1e9} if phase == "decode" else {})}}


def payload(scale=1.0, when="2026-11-20T00:00:00+00:00"):
    benches = [bench(f, b, "decode", v, scale) for (f, b), v in DECODE.items()]
    benches += [bench(f, b, "prefill", 10 * v, scale) for (f, b), v in DECODE.items()]
    return {"machine_info": {"quantbench": {"signature": "h100-test", "device": {"gpu": "NVIDIA H100", "gpu_count": 1,
                                                                                "driver": "580", "cuda": "13.0"},
                                            "versions": {"torch": "2.11", "transformers": "5.17.0", "stack": "current",
                                                         "autoawq": "0.2.9", "compressed-tensors": "0.20.0"}}},
            "commit_info": {"id": "c0ffee", "dirty": False}, "datetime": when, "benchmarks": benches,
            "quantbench": {"schema_version": history.SCHEMA_VERSION, "states": [
                {"case": "m-awq-gemv-b1-p128-decode", "nodeid": "x::test_generation[m-awq-gemv-b1-p128-decode]",
                 "state": "unsupported", "reason": "needs awq_ext", "format": "awq-gemv"}]}}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("hist")
    history.save_run(root, payload(1.0, "2026-11-20T00:00:00+00:00"))
    history.save_run(root, payload(0.7, "2026-11-21T00:00:00+00:00"))  # a 30% slowdown: the gate flags it
    history.save_run(root, payload(1.0, "2026-11-22T00:00:00+00:00"))
    out = tmp_path_factory.mktemp("reports")
    paths = report.render_all(root, out, load_thresholds(THRESHOLDS))
    return paths[0], paths[0].read_text()


def test_every_chart_is_written(rendered):
    readme, text = rendered
    for stem in ("throughput_m_p128", "speedup_m_p128", "memory_m", "history"):
        assert (readme.parent / f"{stem}.png").stat().st_size > 10_000
        assert (readme.parent / f"{stem}.svg").is_file()
        assert f"({stem}.png)" in text


def test_stack_is_printed_at_the_top(rendered):
    _, text = rendered
    head = text.split("## Findings")[0]
    assert "NVIDIA H100 x1" in head and "580 / 13.0" in head and "5.17.0 (current stack)" in head


def test_tables_carry_the_numbers(rendered):
    _, text = rendered
    rows = [" ".join(line.split()) for line in text.split("Decode throughput")[1].splitlines()]
    assert "| ct-w4a16 | 25.4 | 100.0 | 400.0 |" in rows
    assert "needs awq_ext" in text  # the unsupported state and its reason


def test_findings_flag_the_seed_failure_modes(rendered):
    _, text = rendered
    assert "SLOWER THAN BF16: m p128: ct-w4a16 decodes 3.94x slower than bf16 at batch 1" in text
    assert "NO MEMORY SAVING: m: ct-w4a16 holds 101.0 MiB" in text and "(27.0 MiB right after load)" in text
    assert "NO MEMORY SAVING: m: awq-gemm" not in text
    assert "batch 1-4: **awq-gemm**; batch 16: **bf16**" in text
    assert "from batch 16 on, no quantized format beats bf16" in text
    assert ("LIBRARY DISPATCH: m: ct-w4a16 runs behind compressed-tensors offload dispatch on 33 modules: host work on "
            "every module call; without it (ct-w4a16-nodispatch, same dense weights) decode ran 1.20-2.00x as fast "
            "(batch 1, 4, 16); without its forward wrappers too (ct-w4a16-bare, same dense weights) decode ran "
            "1.40-3.00x as fast (batch 1, 4, 16)") in text
    assert "LIBRARY DISPATCH: m: ct-w4a16-nodispatch" not in text


def test_decode_bandwidth_is_stated_against_the_devices_ceiling(rendered, tmp_path):
    _, text = rendered
    # No ceiling measured for this signature: the H100's datasheet copy bandwidth, named as such.
    # bf16 at batch 1: 100 MiB of weights x 100 tokens/s = 10.5 GB/s = 0.3% of 3350 GB/s.
    assert ("DECODE BANDWIDTH: m p128 batch 1: weights read per second, and % of the 3350 GB/s copy ceiling "
            "(NVIDIA H100 SXM datasheet): bf16 10.5 GB/s (0.3%), ct-w4a16-bare 8.07 GB/s (0.2%), awq-gemm 7.34 GB/s "
            "(0.2%), ct-w4a16-nodispatch 5.38 GB/s (0.2%), ct-w4a16 2.69 GB/s (0.1%)") in text
    rows = [" ".join(line.split()) for line in text.split("Decode weight bandwidth")[1].splitlines()[:8]]
    assert rows[0].startswith("(every weight read once per step), % of the 3350 GB/s copy ceiling")
    # The weights are read once per step whatever the batch: 380 tok/s at batch 4 = 95 steps/s = 9.96 GB/s.
    assert "| bf16 | 0.3 | 0.3 | 0.3 |" in rows and "| ct-w4a16 | 0.1 | 0.1 | 0.1 |" in rows
    # A ceiling measured on the machine (quantbench peaks, beside the history) takes precedence.
    history.save_run(tmp_path, payload())
    (tmp_path / "h100-test" / "peaks.json").write_text('{"memory_gbps": 2000.0, "source": "measured: 2048 MiB copy"}')
    measured = report.render_all(tmp_path, tmp_path / "out", load_thresholds(THRESHOLDS))[0].read_text()
    assert "and % of the 2000 GB/s copy ceiling (measured): bf16 10.5 GB/s (0.5%)" in measured


def test_decode_bandwidth_without_any_ceiling_is_in_gb_per_s():
    rows = history.run_frame(payload())
    lines = findings.bandwidth_lines(rows, None)
    assert lines == [l for l in lines if "(no ceiling stored: run `quantbench peaks`)" in l] and len(lines) == 1
    assert findings.decode_bandwidth(rows, "m", 128, None).loc["bf16", 1] == pytest.approx(0.32 * 32.768, rel=1e-3)


def test_naive_fallback_is_flagged():
    rows = pd.DataFrame([{"model": "m", "format": "awq-gemm", "kernel": "naive-dequant", "state": "ok",
                          "prompt_len": 1, "phase": "decode", "batch": 1, "decode_tokens_per_s": 1.0,
                          "weight_bytes_after_load": 1, "weight_bytes_after_first_forward": 1}])
    assert any(f.startswith("NAIVE FALLBACK") for f in findings.flags(rows))


def test_naive_kernel_is_a_fallback_only_where_the_library_picked_it():
    def flags(fmt, kernel):
        rows = pd.DataFrame([{"model": "m", "format": fmt, "kernel": kernel, "state": "ok", "prompt_len": 1,
                              "phase": "decode", "batch": 1, "decode_tokens_per_s": 1.0,
                              "weight_bytes_after_load": 1, "weight_bytes_after_first_forward": 1}])
        return [f for f in findings.flags(rows) if f.startswith("NAIVE FALLBACK")]
    assert flags("awq-gemm-hf", "gptqmodel 7.5.0 backend=auto -> AwqTorchLinear: naive dequantize in torch + matmul")
    assert not flags("awq-gemm-hf-torch", "gptqmodel 7.5.0 backend=torch_awq -> AwqTorchLinear: naive dequantize "
                                          "in torch + matmul")  # the format asked for that kernel
    assert not flags("awq-gemm-hf", "gptqmodel 7.5.0 backend=auto -> TorchAtenAwqLinear: torch int4pack_mm")


def test_quantization_stops_paying():
    speed = pd.DataFrame({1: [1.0, 2.0], 8: [1.0, 1.2], 32: [1.0, 0.8], 64: [1.0, 0.7]}, index=["bf16", "awq-gemm"])
    assert findings.quantization_stops_paying(speed, {"awq-gemm"}) == 32
    assert findings.quantization_stops_paying(speed.drop(columns=[32, 64]), {"awq-gemm"}) == "never"


def test_report_layer_needs_no_torch():
    import subprocess
    import sys
    code = ("import sys, argparse\n"
            "import quantbench.report, quantbench.gate, quantbench.cli\n"
            "quantbench.cli._thresholds(argparse.Namespace(thresholds=None))\n"
            "print('ok' if 'torch' not in sys.modules else 'torch was imported')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]


def test_gemv_vs_gemm_answers_autoawqs_batch_1_claim_or_says_why_not():
    def row(fmt, batch, tps, state="ok", reason=None):
        return {"model": "m", "format": fmt, "state": state, "reason": reason, "prompt_len": 128, "phase": "decode",
                "batch": batch, "decode_tokens_per_s": tps}
    gen = pd.DataFrame([row("awq-gemm", 1, 100.0), row("awq-gemm", 8, 400.0),
                        row("awq-gemv", 1, None, "unsupported", "WQLinear_GEMV needs awq_ext"),
                        row("awq-gemm-hf-gemm", 1, 100.0), row("awq-gemm-hf-gemm", 8, 400.0),
                        row("awq-gemv-hf", 1, 130.0), row("awq-gemv-hf", 8, 300.0)])
    lines = findings.gemv_vs_gemm(gen)
    assert lines == [
        "GEMV VS GEMM: m: awq-gemv could not run (unsupported: WQLinear_GEMV needs awq_ext); awq-gemm ran, so this "
        "stack cannot answer which wins at batch 1",
        "GEMV VS GEMM: m p128 (AutoAWQ's CUDA kernels as gptqmodel builds them): awq-gemv-hf decodes at 1.30x at "
        "batch 1, 0.75x at batch 8 of awq-gemm-hf-gemm; GEMV faster at batch 1"]
    assert findings.gemv_vs_gemm(gen[gen["format"].str.startswith("awq-gemv")]) == []  # no GEMM: nothing to say


def test_the_history_section_says_what_the_gate_found_in_each_run(rendered, tmp_path):
    """A nightly's reader sees which night got slower, and which night a kernel changed, without
    re-running the gate: the run against the run before, newest first."""
    _, text = rendered
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in _section(text, "## History")
            if line.startswith("| 2026")]
    assert rows[0][:3] == ["2026-11-22T00:00:00", "c0ffee", "improved"] and rows[0][3].startswith("suite")
    slowed = [r for r in rows if r[0] == "2026-11-21T00:00:00"]
    assert {r[2] for r in slowed} == {"regressed"} and {r[5] for r in slowed} == {"0.700"}
    assert len(slowed) == 2 + 2 * len(DECODE)  # the suite decision per metric and every case's phase
    history.save_run(tmp_path / "hist", payload(1.0, "2026-11-20T00:00:00+00:00"))
    swapped = payload(1.0, "2026-11-21T00:00:00+00:00")
    for case in swapped["benchmarks"]:
        if case["extra_info"]["format"] == "awq-gemm":
            case["extra_info"]["kernel"] = "naive-dequant"
    history.save_run(tmp_path / "hist", swapped)
    text = report.render_all(tmp_path / "hist", tmp_path / "out", load_thresholds(THRESHOLDS))[0].read_text()
    found = [line for line in _section(text, "## History") if line.startswith("| 2026")]
    assert len(found) == 2 * 3 and all("| kernel-changed |" in line for line in found)
    assert "baseline ran awq_ext.gemm_forward_cuda; this run ran naive-dequant" in found[0]


def test_the_spread_behind_every_median_is_reported(tmp_path):
    """A median without its spread is not a result: each case's interquartile range of round times,
    as % of its median, in a table beside the throughput tables (and as bars in the chart)."""
    run = payload()
    for case in run["benchmarks"]:
        median = case["stats"]["median"]
        wide = 3 if case["extra_info"]["format"] == "ct-w4a16" else 1  # ct-w4a16: 30%, the others 10%
        case["stats"].update(data=[median * (1 + k * wide / 20) for k in (-2, -1, 0, 1, 2)],
                             q1=median * (1 - wide / 20), q3=median * (1 + wide / 20), iqr=median * wide / 10)
    history.save_run(tmp_path / "hist", run)
    text = report.render_all(tmp_path / "hist", tmp_path / "out", load_thresholds(THRESHOLDS))[0].read_text()
    rows = [" ".join(line.split()) for line in text.split("Spread behind those medians")[1].splitlines()[:14]]
    assert "| phase | format | 1 | 4 | 16 |" in rows
    assert "| prefill | bf16 | 10.0 | 10.0 | 10.0 |" in rows and "| decode | ct-w4a16 | 30.0 | 30.0 | 30.0 |" in rows
    assert rows.index("| prefill | bf16 | 10.0 | 10.0 | 10.0 |") < rows.index("| decode | bf16 | 10.0 | 10.0 | 10.0 |")
    frame = history.run_frame(run)
    low, high = guide._rate_quartiles(frame[(frame["format"] == "bf16") & (frame["phase"] == "decode")],
                                       "decode_tokens_per_s")
    assert low[1] == pytest.approx(100 / 1.05) and high[1] == pytest.approx(100 / 0.95)  # bf16 b1: 100 tokens/s


def test_a_guide_rendered_twice_from_the_same_history_is_byte_identical(tmp_path):
    history.save_run(tmp_path / "hist", payload())
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        report.render_all(tmp_path / "hist", out, load_thresholds(THRESHOLDS))
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
    assert any(f.suffix == ".svg" for f in files) and any(f.suffix == ".png" for f in files)
    assert [f for f in files if (outs[0] / f).read_bytes() != (outs[1] / f).read_bytes()] == []


def _section(markdown: str, title: str) -> list[str]:
    lines = markdown.splitlines()
    start = lines.index(title) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return [line for line in lines[start:end] if line.strip()]


@pytest.mark.stack_independent
def test_every_committed_guide_is_rendered_from_the_committed_history(tmp_path):
    """reports/<signature>/ is what people read: it must come from reports/history/<signature>/, not from a
    history nobody kept. Compared: the files, the stack table and the findings (our own f-strings; the
    pandas tables and chart bytes can move with a pandas or matplotlib release, the findings cannot)."""
    from quantbench.paths import REPO_ROOT
    reports = REPO_ROOT / "reports"
    committed = sorted(p.parent.name for p in reports.glob("*/README.md") if p.parent.name != "history")
    assert committed, "no committed guide under reports/"
    report.render_all(reports / "history", tmp_path, load_thresholds(THRESHOLDS))
    assert sorted(p.parent.name for p in tmp_path.glob("*/README.md")) == committed
    for signature in committed:
        files = sorted(p.name for p in (reports / signature).iterdir())
        assert sorted(p.name for p in (tmp_path / signature).iterdir()) == files, signature
        fresh, kept = ((root / signature / "README.md").read_text() for root in (tmp_path, reports))
        for title in ("## Findings",):
            assert _section(fresh, title) == _section(kept, title), f"{signature}: {title} differs; re-render"
        assert [ln for ln in fresh.splitlines() if ln.startswith("| ")][:12] == \
            [ln for ln in kept.splitlines() if ln.startswith("| ")][:12], f"{signature}: stack table differs"


def test_report_on_a_missing_or_wrong_history_path_is_one_line_not_a_traceback(tmp_path):
    from .conftest import run_cli

    missing = run_cli("report", "--history", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert f"no history under {tmp_path / 'nope'}" in missing.stdout
    a_file = tmp_path / "run.json"
    a_file.write_text("{}")
    wrong = run_cli("report", "--history", str(a_file), "--out", str(tmp_path / "out"))
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert f"{a_file}: a file, not a history folder. Fix:" in wrong.stderr


def _keys_reversed(value):
    if isinstance(value, dict):
        return {k: _keys_reversed(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_keys_reversed(v) for v in value]
    return value


@pytest.mark.stack_independent
def test_the_guide_does_not_depend_on_the_order_of_keys_in_a_record(tmp_path):
    """A database's JSONB column hands a run back with its keys reordered: the guide must read the same.
    The committed H100 reference run (generation, kernels, crossover) rendered as stored and reversed."""
    import json

    from quantbench.paths import REPO_ROOT
    paths = history.run_files(REPO_ROOT / "reports" / "history", "nvidia-h100-80gb-hbm3-current-9b2dbb38ba")
    texts = []
    for name, reorder in (("as-stored", lambda p: p), ("reversed", _keys_reversed)):
        runs = [(str(path), history.check_payload(reorder(json.loads(path.read_text())), path)) for path in paths]
        readme = report.render_runs(runs, tmp_path / name, load_thresholds(THRESHOLDS))
        texts.append({p.name: p.read_bytes() for p in readme.parent.iterdir() if p.suffix in (".md", ".svg")})
    assert "Crossover M" in texts[0]["README.md"].decode() and len(texts[0]) > 5
    assert texts[0] == texts[1]


@pytest.mark.stack_independent
def test_weights_an_engine_packed_away_are_unknown_and_no_finding_rests_on_them(tmp_path):
    """The committed vLLM CPU guide said "NO MEMORY SAVING: awq-gemm@vllm holds 2.3 MiB ... vs 1.5 MiB for
    bf16@vllm": vLLM's CPU dispatch had emptied bf16's linear weights (1.5 of its 4.3 MiB counted). Re-rendered
    from the same history, those figures are unknown, and said to be."""
    from .conftest import REPO, run_cli
    history = REPO / "reports" / "history" / "amd-epyc-vllm-5a55be22d3"
    done = run_cli("report", "--history", str(history.parent), "--out", str(tmp_path / "guide"))
    assert done.returncode == 0, done.stdout + done.stderr
    guide = (tmp_path / "guide" / "amd-epyc-vllm-5a55be22d3" / "README.md").read_text()
    findings = guide.split("## Findings", 1)[1].split("\n## ", 1)[0]
    assert not [line for line in findings.splitlines() if "NO MEMORY SAVING" in line and "@vllm" in line]
    (unknown,) = [line for line in findings.splitlines() if line.startswith("- WEIGHTS UNKNOWN: tiny: ")]
    assert "bf16@vllm, " in unknown and "awq-gemm@vllm" in unknown and "recorded before quantbench checked" in unknown
    bandwidth = [line for line in findings.splitlines() if line.startswith("- DECODE BANDWIDTH")]
    assert bandwidth and not any("@vllm" in line for line in bandwidth)  # weights read per second: unknown there
    # the same run's transformers cases keep their counted figures and findings
    assert any("NO MEMORY SAVING: tiny: ct-fp8 holds" in line for line in findings.splitlines())
