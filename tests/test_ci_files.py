"""CI wiring: workflows valid against the GitHub workflow schema and calling only nox sessions."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
CHECKER = shutil.which("check-jsonschema") or shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))


def test_workflows_exist():
    assert {p.name for p in WORKFLOWS} == {"nightly.yml", "perf-gate.yml"}


@pytest.mark.skipif(CHECKER is None, reason="check-jsonschema not installed (extra 'ci')")
def test_workflows_validate_against_the_github_schema():
    result = subprocess.run([CHECKER, "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOWS)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_steps_only_call_nox(path):
    workflow = yaml.safe_load(path.read_text())
    for job in workflow["jobs"].values():
        runs = [step.get("run", "") for step in job["steps"]]
        if any("nox -s nightly(" in run or "nox -s gate" in run for run in runs):  # benchmarks run on a GPU
            assert "self-hosted" in job["runs-on"] and "gpu" in job["runs-on"]
        for step in job["steps"]:
            run = step.get("run")
            if run:
                assert run.startswith(("nox -s", 'python3 -m pip install "nox==')) or run == "exit 1", run


def test_ci_run_calls_the_readme_test_command():
    assert "nox -s tests" in (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "nox -s tests" in readme and "nox -s bench" in readme


@pytest.mark.parametrize("path", sorted((REPO / "tools").glob("*.sh")) + [REPO / ".ci" / "run"], ids=lambda p: p.name)
def test_shell_scripts_parse(path):
    """The tools run on a lent GPU machine between slots: a syntax error must show here."""
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_gate_summary_reaches_the_run_page(tmp_path, monkeypatch):
    """A nightly has no PR to comment on: on GitHub Actions its gate summary goes to the run's page
    ($GITHUB_STEP_SUMMARY), appended after what earlier steps wrote; without the file, nothing."""
    pytest.importorskip("nox", reason="nox not installed (extra 'ci')")
    monkeypatch.syspath_prepend(str(REPO))
    import noxfile

    summary, markdown = tmp_path / "summary.md", tmp_path / "gate.md"
    summary.write_text("earlier step\n", encoding="utf-8")
    markdown.write_text("## quantbench gate: ❌ performance regression\n", encoding="utf-8")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    noxfile._step_summary(markdown)
    noxfile._step_summary(tmp_path / "no-gate-ran.md")
    assert summary.read_text(encoding="utf-8") == "earlier step\n## quantbench gate: ❌ performance regression\n\n"
    monkeypatch.delenv("GITHUB_STEP_SUMMARY")
    noxfile._step_summary(markdown)  # off GitHub Actions: no error, nothing written
    assert summary.read_text(encoding="utf-8").count("quantbench gate") == 1


def test_the_nightly_is_a_fleet_storing_into_one_database():
    """Shards on GPU runners store into the database of one secret; one job after them renders and gates
    the group; no history in the Actions cache (evicted after 7 idle days)."""
    text = (REPO / ".github" / "workflows" / "nightly.yml").read_text()
    workflow = yaml.safe_load(text)
    assert workflow["env"]["QUANTBENCH_HISTORY"] == "${{ secrets.QUANTBENCH_HISTORY_URL }}"
    shard = workflow["jobs"]["shard"]
    assert shard["strategy"]["matrix"]["shard"] == ["1/2", "2/2"] and shard["env"]["QUANTBENCH_SHARD"]
    final = workflow["jobs"]["guide-and-gate"]
    assert final["needs"] == "shard" and final["if"] == "always()"
    assert any(step.get("run") == "nox -s nightly_group" for step in final["steps"])
    assert "actions/cache" not in text
