import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_checkpoints():
    """Every checkpoint kind of the tiny spec, built once (cached across runs in .cache/)."""
    from quantbench.formats import FORMATS
    from quantbench.models import build_fixtures
    return build_fixtures("tiny", list(FORMATS), "cpu", progress=False)


def run_pytest(*args, cwd=REPO, env=None, timeout=900):
    """Run pytest in a subprocess (the benchmarks are a pytest run of their own)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=cwd,
                          capture_output=True, text=True, env=full_env, timeout=timeout)


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "quantbench.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
