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
