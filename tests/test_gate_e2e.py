"""The gate end to end on real CPU measurements: A/A passes, an injected 10% slowdown fails.

Both comparisons use runs made side by side (two pytest processes at once, one core each, the
cores swapped every pair), eight pairs for the injected slowdown (six for the A/A). Measured on the 2-core CI-like VM
(16 decode cases): one after another, the suite ratio of a 10%-slowed run per pair read 0.998,
0.820, 0.997 (the whole VM drifts over tens of seconds); side by side it read 0.911, 0.901, 0.902
(expected 0.909). Single pairs of the same commit still read 0.90-1.16 (the speed of a case also
depends on the process), so one pair is not enough: pooled over 4 pairs A/A read 1.090, over 8
pairs 1.004 (7 of 16 cases worse), and the 10% slowdown 0.898 (16 of 16 worse).

The gate is called with ``--paired`` (run i of each side ran at the same time): per-pair ratios
remove the drift two slow pairs bring. Unpaired, a CI A/A once read 12 of 16 cases worse (sign
test p=0.038) from two slow runs of one side; paired, the same data read 0.962 (p=0.055, unchanged)
and that run's 10% injection 0.898 (8 of 8 pairs slower, p=0.0039).
"""

import subprocess
import sys

import pytest

from quantbench import history

from .conftest import REPO, run_cli, run_pytest, run_pytest_side_by_side

pytestmark = [pytest.mark.stack_independent, pytest.mark.timing]  # A/B pairs side by side, one core each

# The decode cases only: the suite decision rests on their 16 decode throughputs, a prefill case is gated by the same
# code on another metric, and each pair costs ~5 s less (14 pairs a CI run); fewer decisions also give an A/A run
# fewer chances of a false alarm.
MATRIX = ["--qb-formats", "bf16,fp16,ct-w4a16,ct-w8a16", "--qb-batch", "1,2", "--qb-prompt", "16,32",
          "--qb-new-tokens", "16", "--qb-rounds", "10", "-k", "decode"]
PAIRS = 8
# The A/A comparison needs no power, only no false alarm: fewer pairs make a significant result harder,
# never easier (5 pairs, the fewest the paired test decides on: the smallest one-sided Wilcoxon p is 1/32),
# and save CI minutes.
AA_PAIRS = 5
SLOWED = ["--qb-inject-slowdown", "0.10"]
BENCH = "benchmarks/test_generation.py"


def gate(*args):
    return subprocess.run([sys.executable, "-m", "quantbench.cli", "gate", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=900)


def side_by_side_pairs(tmp_path_factory, name: str, extra_b: list[str], pairs: int = PAIRS) -> tuple[list, list]:
    """``pairs`` pairs of runs, side A plain and side B with ``extra_b``; each side's history files."""
    roots = [tmp_path_factory.mktemp(f"{name}-a"), tmp_path_factory.mktemp(f"{name}-b")]
    for pair in range(pairs):
        results = run_pytest_side_by_side([BENCH, *MATRIX, f"--qb-history={roots[0]}", "-q"],
                                          [BENCH, *MATRIX, *extra_b, f"--qb-history={roots[1]}", "-q"],
                                          rotate=pair)
        for result in results:
            assert result.returncode == 0, result.stdout[-2000:]
    files = [history.run_files(root) for root in roots]
    assert [len(f) for f in files] == [pairs, pairs]
    return files[0], files[1]


def merged(files, path):
    """The B side's runs pooled into one current run (as `nox -s gate` does with its head runs)."""
    result = run_cli("merge", *map(str, files), "--out", str(path))
    assert result.returncode == 0, result.stderr
    return path


@pytest.fixture(scope="module")
def same_commit_pairs(tiny_checkpoints, tmp_path_factory):
    return side_by_side_pairs(tmp_path_factory, "same", [], pairs=AA_PAIRS)


@pytest.fixture(scope="module")
def slowed_pairs(tiny_checkpoints, tmp_path_factory):
    return side_by_side_pairs(tmp_path_factory, "slow", SLOWED)


def test_same_commit_passes(same_commit_pairs, tmp_path, tmp_path_factory):
    base, head = same_commit_pairs
    # No --confirm-rerun here: a rerun runs alone, and side by side this VM ran the matrix in 0.83x
    # the time it took alone (measured), so a lone rerun is not a like-for-like repeat.
    out = aa_gate(base, head, tmp_path / "head.json")
    if out.returncode == 1:
        # The gate decides ~120 figures at alpha 0.05 each: on a noisy host one set of A/A pairs can
        # cross a threshold by chance (CI, 2026-12-07: all 6 pairs' decode scores lower, suite 0.947,
        # p=1/64; one 2 ms TTFT at 1.42x). A false alarm is chance, so a fresh, independent set of pairs
        # does not repeat it; a gate that is biased fails that set too. The fresh set is gated on its own,
        # never pooled with the first: the test fails when both sets fail, so a gate whose false alarms
        # are the 5% its alpha allows passes 99.75% of CI runs, while a biased gate (a wrong pairing,
        # an inverted direction) regresses every set and fails.
        print(out.stdout[-1500:])
        fresh_base, fresh_head = side_by_side_pairs(tmp_path_factory, "same-again", [], pairs=AA_PAIRS)
        out = aa_gate(fresh_base, fresh_head, tmp_path / "head-again.json")
    print(out.stdout[-3000:])
    assert out.returncode == 0, out.stdout[-4000:]
    assert "quantbench gate: passed" in out.stdout


def aa_gate(base, head, merged_path):
    return gate("--paired", "--current", str(merged(head, merged_path)), "--baseline", ",".join(map(str, base)))


def test_injected_slowdown_fails_naming_case_and_ratio(slowed_pairs, tmp_path, tmp_path_factory):
    base, slow = slowed_pairs
    summary = tmp_path / "summary.md"

    def slowdown_gate(base, slow):
        return gate("--paired", "--current", str(merged(slow, tmp_path / "slow.json")),
                    "--baseline", ",".join(map(str, base)), "--confirm-rerun", "1", "--markdown", str(summary))
    out = slowdown_gate(base, slow)
    if out.returncode == 0:
        # A VM whose host is busy (here, 2026-12-03: the suite's 10% read 0.86 on run scores, p=0.37; its cases read
        # 0.72-1.32) hides a slowdown in 8 pairs: 8 more pairs, the power a slowdown needs. The A/A
        # test's second chance is a fresh set gated alone (never pooled), so a false alarm is not made easier.
        print(out.stdout[-1500:])
        more_base, more_slow = side_by_side_pairs(tmp_path_factory, "slow-more", SLOWED)
        out = slowdown_gate(base + more_base, slow + more_slow)
    print(out.stdout[-3000:])
    assert out.returncode == 1, out.stdout[-4000:]
    regressed = [line for line in out.stdout.splitlines() if line.startswith("REGRESSED")]
    throughput = [line for line in regressed if "tokens_per_s" in line]
    # Named: the case (or the suite-level decision) and its ratio, below 1 for a throughput metric.
    assert throughput and all("ratio 0." in line for line in throughput), out.stdout[-4000:]
    assert "performance regression" in summary.read_text()


def test_pytest_benchmark_compare_reads_the_history(same_commit_pairs):
    base, _ = same_commit_pairs
    out = subprocess.run([sys.executable, "-c", "from pytest_benchmark.cli import main; main()", "compare",
                          *map(str, base[:2]), "--columns=median,iqr,rounds", "--group-by=name"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "test_generation[tiny-bf16-transformers-b1-p16-decode]" in out.stdout


def test_gate_right_after_a_run_with_the_pytest_option(same_commit_pairs):
    base, _ = same_commit_pairs
    # A 50% stretch: far past any drift of the VM, so one run on its own decides.
    result = run_pytest("benchmarks/test_generation.py", *MATRIX, "--qb-inject-slowdown", "0.5",
                        "--qb-gate", ",".join(map(str, base)), "-q")
    assert result.returncode == 1
    assert "quantbench gate: FAILED" in result.stdout and "REGRESSED" in result.stdout
