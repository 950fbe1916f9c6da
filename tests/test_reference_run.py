"""tools/reference_run.sh end to end on CPU, on the tiny spec: a GPU slot is rare and short, so a
broken stage must show here, not on the lent machine."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from .conftest import REPO

pytestmark = pytest.mark.stack_independent

SCRIPT = REPO / "tools" / "reference_run.sh"


def reference_run(tmp_path, *stages, **knobs):
    # the tiny checkpoints the session built (tests/conftest.py: the build_fixtures the build stage runs, which asks
    # for --device cuda), copied where the script keeps its own (QB_STATE/cache): building them again inside the
    # sweep cost each run ~30 s of CI
    from quantbench.formats.checkpoints import cache_root
    shutil.copytree(cache_root() / "tiny", tmp_path / "state" / "cache" / "tiny", dirs_exist_ok=True)
    env = {**os.environ, "OUT": str(tmp_path / "out"), "QB_STATE": str(tmp_path / "state"),
           # the interpreter running the tests is the one the script's python3 must be
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}",
           "QB_MODEL": "tiny", "QB_KERNEL_MODELS": "tiny", "QB_NEW_TOKENS": "4", "QB_ROUNDS": "2",
           "QB_REPEATS": "2", "QB_BATCH": "1,2", "QB_HF_BATCH": "1", "QB_KERNELS": "torch-fp16,awq-hf-aten",
           "QB_KERNEL_ROUNDS": "2", "QB_GPTQ_EXTENSIONS": "awq", "QB_NO_SHARDS": "1", **knobs}
    return subprocess.run(["bash", str(SCRIPT), *stages], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)


def test_the_reference_stages_run_and_write_what_the_guide_needs(tiny_checkpoints, tmp_path):
    # setup is left out: it installs the offline wheel folder (.whl, built for the GPU machine's Python)
    result = reference_run(tmp_path, "gptq", "sweep", "hf", "kernels", "repeat", "report")
    out = tmp_path / "out"
    timings = (out / "timings.txt").read_text()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in ("sweep-current", "hf-current", "kernels-current", "repeat-current-1", "repeat-current-2"):
        assert f"{name} (current): rc 0" in timings, timings
        assert json.loads((out / f"{name}.json").read_text())["benchmarks"]
    hf = json.loads((out / "hf-current.json").read_text())
    ran = {b["extra_info"]["format"] for b in hf["benchmarks"]}
    stated = {s["format"]: s["reason"] for s in hf["quantbench"]["states"]}
    if "awq-gemm-hf" in ran:  # the current stack with gptqmodel: its CPU kernel runs, CUDA kernels are stated
        assert "Marlin kernel requires CUDA" in stated["awq-gemm-hf-marlin"]
        assert "gptqmodel extension awq: FAILED" in (out / "gptq-build-current.txt").read_text()
    else:
        assert "awq-gemm-hf" in stated
    assert "cv_pct" in (out / "repeatability-current.txt").read_text()
    assert (out / "aa-gate-current.md").is_file()
    guides = list((out / "reports").glob("*/README.md"))  # rendered from the newest run: a repeat
    assert guides and "awq-gemm" in guides[0].read_text()
    assert list((out / "history").glob("*/*.json"))  # every stage copies the history to OUT


def test_a_stage_past_the_deadline_is_skipped_with_a_line(tiny_checkpoints, tmp_path):
    result = reference_run(tmp_path, "sweep", "gptq", QB_DEADLINE=str(int(time.time())))
    timings = (tmp_path / "out" / "timings.txt").read_text()
    assert result.returncode == 0
    assert "sweep-current (current): skipped, no time left before QB_DEADLINE" in timings
    assert "gptq (current): skipped, no time left before QB_DEADLINE" in timings
    assert not (tmp_path / "out" / "sweep-current.json").exists()


def test_the_plan_predicts_every_pytest_stage_within_a_slot_without_a_gpu(tmp_path):
    """A lent GPU runner gives 10-minute commands: on 3ae1c25 a stage could run 3000 s, the GPU defaults were ~900
    generation cases and 9 serving points, and nothing said so before the slot was spent. The plan collects each
    stage's cases as on CUDA (its defaults, the GPU models), deals them into the stage's slots as --qb-shard will,
    and predicts each slot's wall time from the H100 run."""
    env = {**os.environ, "OUT": str(tmp_path / "out"), "QB_STATE": str(tmp_path / "state"),
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(["bash", str(SCRIPT), "plan"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    planned = dict(line.split(": ", 1) for line in result.stdout.splitlines() if line.startswith("plan "))
    for stage in ("sweep", "compile", "hf", "formats", "prompts", "kernels", "vllm", "serve"):
        shards = [words for name, words in planned.items() if name.startswith(f"plan {stage}-")]
        assert shards, (stage, planned)
        for line in shards:  # a stage too big for one slot is dealt into shards, each its own stage NAME:I
            assert "against a 540 s slot: fits" in line, (stage, line)
            assert int(line.split(" cases")[0]) > 0, (stage, line)
    assert "runs its own commands" in planned["plan build"]
    assert not (tmp_path / "out" / "sweep-current.json").exists()  # nothing ran


def test_a_shard_of_a_stage_runs_its_part_of_the_cases(tiny_checkpoints, tmp_path):
    result = reference_run(tmp_path, "sweep:2", QB_NO_SHARDS="", QB_SWEEP_FORMATS="bf16,ct-w4a16,awq-gemm")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = json.loads((tmp_path / "out" / "sweep-current-s2.json").read_text())
    shard = run["quantbench"]["shard"]
    assert (shard["index"], shard["count"]) == (2, 3) and shard["group"] == "reference-current-sweep-current"
    ran = {b["extra_info"]["format"] for b in run["benchmarks"]} | {s["format"] for s in run["quantbench"]["states"]}
    assert len(ran) == 1  # one checkpoint of the three per shard, all its cases together
