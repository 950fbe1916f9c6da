"""The gate end to end on real CPU measurements: A/A passes, an injected 10% slowdown fails."""

import subprocess
import sys

import pytest

from quantbench import history

from .conftest import REPO, run_pytest

pytestmark = pytest.mark.stack_independent

MATRIX = ["--qb-formats", "bf16,fp16,ct-w4a16,ct-w8a16", "--qb-batch", "1,2", "--qb-prompt", "16,32",
          "--qb-new-tokens", "16", "--qb-rounds", "10"]


def gate(*args):
    return subprocess.run([sys.executable, "-m", "quantbench.cli", "gate", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def baseline_runs(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("history")
    for _ in range(3):
        result = run_pytest("benchmarks/test_generation.py", *MATRIX, f"--qb-history={root}", "-q")
        assert result.returncode == 0, result.stdout[-2000:]
    files = history.run_files(root)
    assert len(files) == 3
    return root, files


def test_same_commit_passes(baseline_runs):
    root, files = baseline_runs
    result = run_pytest("benchmarks/test_generation.py", *MATRIX, f"--qb-history={root}", "-q")
    assert result.returncode == 0
    current = history.run_files(root)[-1]
    out = gate("--current", str(current), "--baseline", ",".join(map(str, files)), "--confirm-rerun", "3")
    print(out.stdout[-3000:])
    assert out.returncode == 0, out.stdout[-4000:]
    assert "quantbench gate: passed" in out.stdout


def test_injected_slowdown_fails_naming_case_and_ratio(baseline_runs, tmp_path):
    root, files = baseline_runs
    slow_root = tmp_path / "slow"
    result = run_pytest("benchmarks/test_generation.py", *MATRIX, "--qb-inject-slowdown", "0.10",
                        f"--qb-history={slow_root}", "-q")
    assert result.returncode == 0
    current = history.run_files(slow_root)[-1]
    summary = tmp_path / "summary.md"
    out = gate("--current", str(current), "--baseline", ",".join(map(str, files)), "--confirm-rerun", "1",
               "--markdown", str(summary))
    print(out.stdout[-3000:])
    assert out.returncode == 1, out.stdout[-4000:]
    regressed = [line for line in out.stdout.splitlines() if line.startswith("REGRESSED")]
    throughput = [line for line in regressed if "tokens_per_s" in line]
    # Named: the case (or the suite-level decision) and its ratio, below 1 for a throughput metric.
    assert throughput and all("ratio 0." in line for line in throughput), out.stdout[-4000:]
    assert "performance regression" in summary.read_text()


def test_pytest_benchmark_compare_reads_the_history(baseline_runs):
    root, files = baseline_runs
    out = subprocess.run([sys.executable, "-c", "from pytest_benchmark.cli import main; main()", "compare",
                          *map(str, files[:2]), "--columns=median,iqr,rounds", "--group-by=name"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "test_generation[tiny-bf16-b1-p16-decode]" in out.stdout


def test_gate_right_after_a_run_with_the_pytest_option(baseline_runs):
    root, files = baseline_runs
    result = run_pytest("benchmarks/test_generation.py", *MATRIX, "--qb-inject-slowdown", "0.5",
                        "--qb-gate", ",".join(map(str, files)), "-q")
    assert result.returncode == 1
    assert "quantbench gate: FAILED" in result.stdout and "REGRESSED" in result.stdout
