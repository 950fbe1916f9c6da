import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """In a pytest-xdist worker (nox -s tests runs the tests that time nothing two at a time): the benchmark runs
    these tests start are pytest runs of their own, and the plugin refuses to time cases under xdist; they must not
    inherit the worker's environment marks."""
    if hasattr(config, "workerinput"):
        worker = config.workerinput["workerid"]
        for name in [name for name in os.environ if name.startswith("PYTEST_XDIST_")]:
            del os.environ[name]
        # torch.compile's cache is one folder per user: each worker, and the benchmark runs it starts, compiles into a
        # folder of its own, so no two processes write one cache at once. (It did not cure test_compiled's wrong
        # compiled step in a worker: that test runs in a process of its own, marked alone.)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"torchinductor-qb-{worker}")


def gptqmodel_stack() -> bool:
    """gptqmodel installed beside transformers 5.x: the AWQ runtime of the awq-*-hf formats and kernels."""
    import transformers

    from quantbench.formats.gptqmodel import gptqmodel_available
    return gptqmodel_available() and not transformers.__version__.startswith("4.")


needs_gptqmodel = pytest.mark.skipif(not gptqmodel_stack(), reason="gptqmodel on transformers 5.x not installed")


@pytest.fixture(scope="session")
def tiny_checkpoints():
    """Every checkpoint kind of the tiny spec, built once (cached across runs in .cache/)."""
    from quantbench.formats import FORMATS
    from quantbench.formats.checkpoints import build_fixtures
    return build_fixtures("tiny", list(FORMATS), "cpu", progress=False)


def run_pytest(*args, cwd=REPO, env=None, timeout=900):
    """Run pytest in a subprocess (the benchmarks are a pytest run of their own)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=cwd,
                          capture_output=True, text=True, env=full_env, timeout=timeout)


def run_pytest_side_by_side(*arg_lists, rotate: int = 0, timeout=900):
    """Several pytest subprocesses at the same time, each pinned to its own core (single-threaded
    torch): the runner ``nox -s gate`` uses (quantbench.side_by_side)."""
    from quantbench.side_by_side import Command, run_side_by_side
    return run_side_by_side([Command([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=REPO)
                             for args in arg_lists], rotate=rotate, timeout=timeout)


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "quantbench.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (tests/pgserver.py); skipped with the fix where the
    server binaries are missing, failed instead under .ci/run (QUANTBENCH_REQUIRE_POSTGRES=1)."""
    from . import pgserver
    try:
        server = pgserver.start_server()
    except (OSError, subprocess.SubprocessError) as exc:
        why = f"no PostgreSQL server to test against ({getattr(exc, 'stderr', None) or exc})"
        if os.environ.get("QUANTBENCH_REQUIRE_POSTGRES"):
            pytest.fail(why, pytrace=False)
        pytest.skip(f"{why}. Fix: {pgserver.INSTALL}")
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres, request):
    """A fresh database on the session's server for one test."""
    import hashlib
    return postgres.create_database("t_" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:16])
