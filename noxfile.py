"""nox sessions: `nox -s tests` (the test suite) and `nox -s bench` (the main job).

Each session runs once per library stack (current: transformers 5.x, legacy: 4.51). On a
machine without an NVIDIA GPU the local CPU build of torch is installed first, never the CUDA
one; set QUANTBENCH_TORCH to choose the torch requirement on GPU machines.
"""

from __future__ import annotations

import os
import shutil

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = False

STACKS = ["current", "legacy"]
CPU_TORCH = "torch==2.13.0"


def has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None


def install(session: nox.Session, stack: str) -> None:
    """torch first (so nothing else can pull a CUDA build), then the stack, then autoawq --no-deps."""
    session.install(os.environ.get("QUANTBENCH_TORCH", "torch" if has_gpu() else CPU_TORCH))
    session.install("-e", f".[{stack}]")
    # autoawq declares triton; on a CPU-only machine Triton makes AutoAWQ route GEMM to GPU kernels.
    session.install("--no-deps", "autoawq==0.2.9")
    session.env["QUANTBENCH_STACK"] = stack


@nox.session
@nox.parametrize("stack", STACKS)
def tests(session: nox.Session, stack: str) -> None:
    """Run the unit and end-to-end tests (CPU, minutes)."""
    install(session, stack)
    session.run("pytest", "tests", *session.posargs)


@nox.session
@nox.parametrize("stack", STACKS)
def bench(session: nox.Session, stack: str) -> None:
    """Run the benchmark matrix (tiny models on CPU, the GPU matrix with CUDA) and write results/."""
    install(session, stack)
    out = f"results/{stack}"
    os.makedirs(out, exist_ok=True)
    session.run("quantbench", "fixtures", "build", "--model", "tiny", "--formats", "all")
    session.run("pytest", "benchmarks/test_generation.py", "-p", "no:cacheprovider",
                f"--benchmark-json={out}/bench.json", "--benchmark-columns=median,iqr,rounds",
                "--benchmark-sort=name", *session.posargs)
