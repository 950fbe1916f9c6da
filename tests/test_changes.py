"""Change points across a history (quantbench.gate.changes): the power and false-alarm rate on synthetic series at
the measured CPU noise, and `quantbench changes` on a history with a planted step where a library was upgraded and
the kernel changed."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from quantbench import history
from quantbench.gate.changes import find_change_points
from quantbench.history import record

from .conftest import REPO, run_cli

pytestmark = pytest.mark.stack_independent

CV = 0.038      # run-to-run sd of one case's run median on the 2-core CI VM (docs/gate.md)
STEP = 0.12     # the step the issue bounds: a 12% drop
TRIALS = 200
LENGTHS = ((8, 4), (10, 5), (20, 10))


def _power_table(seed: int = 20261207) -> dict:
    """(before, after) -> (share of 12% steps found at the step, +-1 run; share of A/A series with any change point)."""
    rng, table = np.random.default_rng(seed), {}
    for before, after in LENGTHS:
        found = alarms = 0
        for _ in range(TRIALS):
            stepped = np.concatenate([rng.normal(1, CV, before), rng.normal(1 - STEP, CV * (1 - STEP), after)])
            found += any(abs(c.index - before) <= 1 for c in find_change_points(list(stepped)))
            alarms += bool(find_change_points(list(rng.normal(1, CV, before + after))))
        table[(before, after)] = (found / TRIALS, alarms / TRIALS)
    return table


def test_power_and_false_alarms_at_the_measured_cpu_noise():
    table = _power_table()
    print(f"\n12% step, CV {CV:.1%}, {TRIALS} series per cell: points before+after | found | A/A false alarms")
    for (before, after), (found, alarms) in table.items():
        print(f"  {before:>2}+{after:<2} | {found:6.1%} | {alarms:5.1%}")
    assert table[(10, 5)][0] >= 0.90, table
    assert table[(20, 10)][0] >= 0.90, table
    assert all(alarms <= 0.05 for _, alarms in table.values()), table


def test_a_step_is_placed_sized_and_confirmed_and_flat_or_short_series_have_none():
    values = [100.0, 101.0, 99.0, 100.5, 99.5, 100.0, 88.0, 87.5, 88.5, 88.0, 87.0]
    (point,) = find_change_points(values)
    assert point.index == 6 and point.change == pytest.approx(87.8 / 100.0 - 1, abs=0.002)
    assert point.before.n == 6 and point.after.n == 5 and point.p_value < 0.001 and point.confirm_p < 0.05
    assert find_change_points([100.0] * 12) == []
    assert find_change_points([100.0, 90.0, 80.0, 70.0, 60.0]) == []  # fewer than two segments of 3
    two = find_change_points([10, 10.1, 9.9, 10, 12, 12.1, 11.9, 12, 9, 9.1, 8.9, 9])
    assert [c.index for c in two] == [4, 8]


# ----------------------------------------------------------------------------- a history with a planted step
TEMPLATE = min((REPO / "reports/history").glob("intel-r-xeon-r-processor-current-*/2*.json"))
CASE = "test_generation[tiny-bf16-transformers-b1-p32-decode]"


def _planted_history(root: Path, before: int = 8, after: int = 5) -> list[Path]:
    """``before`` runs at the template's speed, then ``after`` at 15% slower decode throughput from the run where
    transformers 5.17.0 -> 5.18.0 and the bf16 kernel changed; 3% noise on every run."""
    template, rng, paths = history.load_run(TEMPLATE), np.random.default_rng(7), []
    for index in range(before + after):
        payload = copy.deepcopy(template)
        slow = index >= before
        factor = (0.85 if slow else 1.0) * rng.normal(1, 0.03)
        payload["datetime"] = f"2026-11-{index + 1:02d}T02:00:00+00:00"
        payload["commit_info"] = {**record.commit(payload), "id": f"{index:02d}" + "c0ffee" * 6}
        record.machine(payload)["versions"]["transformers"] = "5.18.0" if slow else "5.17.0"
        for bench in payload["benchmarks"]:
            stats = bench.get("stats") or {}
            if stats.get("data"):
                stats["data"] = [t / factor for t in stats["data"]]
                stats["median"] = float(np.median(stats["data"]))
            if slow and bench["name"] == CASE:
                record.case_info(bench)["kernel"] = "torch.matmul[bfloat16] (ref)"
        paths.append(history.save_run(root, payload, at_run_time=True))
    return paths


def test_changes_names_the_run_the_versions_and_the_kernel_where_a_case_got_slower(tmp_path):
    runs = _planted_history(tmp_path / "history")
    out = run_cli("changes", "--history", str(tmp_path / "history"), "--case", CASE, "--metric",
                  "decode_tokens_per_s", "--out", str(tmp_path / "guide"), "--json", str(tmp_path / "cp.json"),
                  "--fail-on-regression")
    print(out.stdout)
    assert out.returncode == 1, out.stdout + out.stderr  # a regression change point, and it was asked to fail
    (line,) = [text for text in out.stdout.splitlines() if text.startswith("REGRESSION")]
    assert f"from {runs[8].name}" in line and "-1" in line.split("%")[0]  # -1x.x%
    assert "the kernel changed: " in line and "(the likeliest cause)" in line
    (point,) = json.loads((tmp_path / "cp.json").read_text())["change_points"]
    assert point["starts_at"] == runs[8].name and -20 < point["change_pct"] < -10
    assert point["n_before"] == 8 and point["n_after"] == 5 and point["commit"].startswith("08")
    page = (tmp_path / "guide" / "CHANGES.md").read_text()
    assert "REGRESSION" not in page and "regression" in page and (tmp_path / "guide" / "changes-0.png").is_file()

    # the versions are named where the kernel stayed the same (every other case)
    other = run_cli("changes", "--history", str(tmp_path / "history"), "--case", "*bf16-transformers-b1-p128-decode*",
                    "--metric", "decode_tokens_per_s")
    assert "versions changed: versions.transformers 5.17.0 -> 5.18.0" in other.stdout, other.stdout

    # the nightly's view: new since the run before tonight's, none since tonight's
    newest = run_cli("changes", "--history", str(tmp_path / "history"), "--case", CASE, "--metric",
                     "decode_tokens_per_s", "--since", runs[-1].name, "--fail-on-regression")
    assert newest.returncode == 0 and "0 change point(s) new since" in newest.stdout, newest.stdout
    appeared = run_cli("changes", "--history", str(tmp_path / "history"), "--case", CASE, "--metric",
                       "decode_tokens_per_s", "--since", runs[9].name)
    assert "1 change point(s) new since" in appeared.stdout, appeared.stdout


def test_a_history_too_short_for_a_change_point_says_so(tmp_path):
    _planted_history(tmp_path / "history", before=3, after=2)
    out = run_cli("changes", "--history", str(tmp_path / "history"), "--case", CASE)
    assert out.returncode == 0 and "0 change point(s)" in out.stdout
    assert "fewer than 6 runs" in out.stdout, out.stdout
