"""The pytest plugin: options, the parametrized matrix, and what goes into the benchmark JSON.

Loaded by the repository's conftest.py (``pytest_plugins``), so plain ``pytest benchmarks/``
works as well as the nox sessions.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path

import pytest

from .bench.cases import CPU_DEFAULTS, FULL_SERVE_SWEEP, GPU_DEFAULTS, build_cases, parse_int_list
from .errors import State
from .history import SCHEMA_VERSION
from .offline import stay_offline
from .paths import THRESHOLDS

stay_offline()  # on plugin import: before any test or fixture imports transformers


def _positive_int(text: str) -> int:
    """argparse type: 0 or a negative count is an error, never a silent fall back to the default."""
    import argparse
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    import argparse
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def pytest_addoption(parser):
    group = parser.getgroup("quantbench")
    group.addoption("--qb-models", default=None, help="model specs, comma-separated (CPU default: tiny)")
    group.addoption("--model-dir", action="append", default=[], metavar="PATH",
                    help="benchmark a checkpoint directory; format detected from config.json (repeatable)")
    group.addoption("--qb-formats", default="all",
                    help="formats, comma-separated, or 'all'; a format with a runtime's suffix runs on that "
                         "runtime only (e.g. bf16,bf16+compile,bf16@vllm,bf16@vllm+eager)")
    group.addoption("--qb-runtimes", default="transformers",
                    help="runtimes every listed format runs on, comma-separated, or 'all' "
                         "(transformers, transformers+compile, vllm, vllm+eager)")
    group.addoption("--qb-batch", default=None, help="batch sizes, comma-separated")
    group.addoption("--qb-prompt", default=None, help="prompt lengths in tokens, comma-separated")
    group.addoption("--qb-new-tokens", type=_positive_int, default=None, help="decode tokens per round")
    group.addoption("--qb-rounds", type=_positive_int, default=None, help="measured rounds per case")
    group.addoption("--qb-device", default="auto", choices=("auto", "cpu", "cuda"))
    group.addoption("--qb-inject-slowdown", type=float, default=0.0,
                    help="TEST ONLY: stretch every timed region by this fraction (e.g. 0.10)")
    group.addoption("--qb-kernel-models", default=None,
                    help="specs whose (K, N) shapes the kernel suite uses (CPU: tiny,tinyllama-1.1b)")
    group.addoption("--qb-kernels", default="all", help="kernels, comma-separated, or 'all'")
    group.addoption("--qb-m", default=None, help="kernel suite M (tokens in flight) sweep, comma-separated")
    group.addoption("--qb-threads", type=_positive_int, default=None,
                    help="torch CPU threads (default on CPU: 1, for run-to-run stability over peak speed)")
    group.addoption("--qb-isolate", default="auto", choices=("auto", "all", "none"),
                    help="run each checkpoint's runtime in a child process of its own, so that a native abort, "
                         "a segfault or a hang is a case's state, not the run's end: auto (the runtime's own "
                         "choice: vLLM's engine), all, or none")
    group.addoption("--qb-case-budget", type=_positive_float, default=None, metavar="S",
                    help="seconds one case may take before it is stopped as too-slow (default: "
                         "fixtures/budgets.toml for the device kind)")
    group.addoption("--qb-start-budget", type=_positive_float, default=None, metavar="S",
                    help="seconds an engine's start (load, first forward) in a child process may take "
                         "(default: fixtures/budgets.toml)")
    group.addoption("--qb-deadline", type=_positive_float, default=None, metavar="S",
                    help="end this pytest cleanly S seconds after it starts: the case running then finishes (its "
                         "own budget bounds it), every case after it is stated not-reached, and the JSON and the "
                         "history are written (a GPU runner's command limit would kill it and lose them)")
    group.addoption("--qb-plan", default=None, choices=("cuda",), metavar="DEVICE",
                    help="run nothing: print each collected case's predicted seconds on DEVICE (the committed H100 "
                         "run's figures, quantbench.bench.plan) and the total against a 540 s slot; works on a "
                         "machine without that device (tools/reference_run.sh plan)")
    group.addoption("--qb-plan-slots", type=_positive_int, default=1, metavar="N",
                    help="with --qb-plan: plan the cases as --qb-shard I/N would deal them, each shard a slot")
    group.addoption("--qb-serve-concurrency", default=None, metavar="N,N",
                    help="serving suite: the client's max concurrency at each load point (CPU default 1,2,4; "
                         "GPU 1,16,64; 'full': 1,2,4,...,256)")
    group.addoption("--qb-serve-rate", default="", metavar="R,R",
                    help="serving suite: Poisson request rates (requests/s) as load points too (default: none)")
    group.addoption("--qb-serve-prompts", type=_positive_int, default=None, metavar="N",
                    help="serving suite: requests per round (default: 4 x concurrency, at least 16 on CPU, 64 on GPU)")
    group.addoption("--qb-serve-input-len", type=_positive_int, default=None, metavar="TOKENS",
                    help="serving suite: prompt tokens per request (CPU default 32, GPU 512)")
    group.addoption("--qb-serve-output-len", type=_positive_int, default=None, metavar="TOKENS",
                    help="serving suite: output tokens per request, ignore_eos (CPU default 32, GPU 128)")
    group.addoption("--qb-serve-max-seqs", type=_positive_int, default=None, metavar="N",
                    help="serving suite: the server's --max-num-seqs (default: the highest concurrency)")
    group.addoption("--qb-serve-max-model-len", type=_positive_int, default=None, metavar="TOKENS",
                    help="serving suite: the server's --max-model-len (default: input + output length + 1)")
    group.addoption("--qb-serve-port", type=_positive_int, default=None, metavar="PORT",
                    help="serving suite: the port on 127.0.0.1 each server binds (default: a free one)")
    group.addoption("--qb-serve-engine", default="auto", choices=("auto", "eager", "compiled"),
                    help="serving suite: the server's engine (auto: eager on CPU, compiled on GPU)")
    group.addoption("--qb-serve-keep", default=None, metavar="DIR",
                    help="serving suite: keep vLLM's client result JSON of every round here")
    group.addoption("--qb-progress", type=float, default=30.0, metavar="S",
                    help="print how far the run is (cases done, time so far, an estimate of what is left) at most "
                         "every S seconds and after the last case; 0: never")
    group.addoption("--qb-history", default=None, metavar="DIR|URL",
                    help="store this run under DIR/<machine signature>/, or in a PostgreSQL database "
                         "(postgresql://...; credentials from the URL, PG* variables or ~/.pgpass)")
    group.addoption("--qb-shard", default=None, metavar="I/N",
                    help="run the I-th of N deterministic parts of the case matrix (whole models per part); "
                         "the N shards of one run share --qb-group")
    group.addoption("--qb-group", default=None, metavar="ID",
                    help="the id the shards of one run share (default: $QUANTBENCH_GROUP, else $GITHUB_RUN_ID)")
    group.addoption("--qb-gate", default=None, metavar="BASELINE",
                    help="after the run, gate it against BASELINE (history files, or 'latest' / 'previous' "
                         "in --qb-history: see quantbench gate --help)")
    group.addoption("--qb-thresholds", default=None, metavar="TOML", help="default: fixtures/thresholds.toml")
    group.addoption("--qb-gate-fail-on", default="regressed",
                    help="gate states that fail the run, comma-separated (e.g. regressed,missing)")
    group.addoption("--qb-gate-summary", default=None, metavar="PATH", help="write the gate's Markdown summary here")


def _device(config):
    import torch
    if config.getoption("qb_plan"):  # planning a device's run: its defaults, nothing touches it
        return torch.device(config.getoption("qb_plan"))
    choice = config.getoption("qb_device")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--qb-device cuda: no CUDA device is visible to torch")
    return torch.device(choice)


def _defaults(config):
    return GPU_DEFAULTS if _device(config).type == "cuda" else CPU_DEFAULTS


@dataclass
class RunState:
    """What the plugin keeps for one pytest run (in ``config.stash``)."""

    pairs: list = field(default_factory=list)           # (format, runtime) pairs of the generation suite
    serving_pairs: list = field(default_factory=list)   # (format, server runtime) pairs of the serving suite
    serving: object = None                              # bench.serving.ServingPlan
    batches: list = field(default_factory=list)
    prompts: list = field(default_factory=list)
    sources: list = field(default_factory=list)
    kernel_cases: list = field(default_factory=list)
    states: object = None                               # bench.runner.StateRecorder
    telemetry_start: list = field(default_factory=list)
    fail_on: tuple = ()
    thresholds: object = None
    scratch: Path | None = None                         # a scratch --benchmark-json folder, removed at the end
    output_json: dict | None = None                     # the run as pytest-benchmark wrote it
    peaks: dict | None = None
    crossover: object = None
    saved: object = None                                # where the run was stored (a path or a database row)
    save_error: str | None = None
    store: object = None                                # history.FolderStore / PostgresStore for --qb-history
    store_warning: str | None = None                    # the store could not be used when the run started
    notes: list[str] = field(default_factory=list)      # said at the start and kept in the run (own code ignored)
    shard: object = None                                # bench.shards.Shard for --qb-shard
    gate_result: tuple | None = None                    # (baseline paths, GateResult or QuantbenchError)
    budget: object = None                               # bench.budgets.Budget: per case, per engine start
    deadline: float | None = None                       # --qb-deadline, on time.monotonic()'s clock
    journal: object = None                              # history.journal.Journal: each case as it ends
    journaled: tuple = (0, 0)                           # benchmarks and states already in the journal
    journal_left: Path | None = None                    # a journal kept because the run's JSON was not written
    case_ids: list = field(default_factory=list)        # node ids of the run's quantbench cases, as collected
    progress: object = None                             # bench.progress.Progress: how far the run is
    progress_kinds: dict = field(default_factory=dict)  # node id -> its kind of case, for the progress line
    progress_started: float = 0.0                       # when the first case started (monotonic)
    progress_said: float = 0.0                          # when the progress line was last printed (monotonic)
    case_started: float = 0.0                           # when the running case started (monotonic)
    not_reached: int = 0                                # cases the deadline stated without running


STATE = pytest.StashKey[RunState]()


def run_state(config) -> RunState:
    return config.stash[STATE]


def pytest_configure(config):
    config.addinivalue_line("markers", "quantbench: a generated quantbench benchmark case")
    from .bench.states import StateRecorder
    from .errors import QuantbenchError
    state = config.stash[STATE] = RunState(states=StateRecorder())
    from .bench.saving import SafeSaving
    if not config.pluginmanager.has_plugin("quantbench-safe-saving"):
        config.pluginmanager.register(SafeSaving(config), "quantbench-safe-saving")
    if config.getoption("qb_deadline"):
        state.deadline = time.monotonic() + config.getoption("qb_deadline")
    try:
        _read_matrix(config, state)
        _read_gate_options(config, state)
        _read_shard(config, state)
    except QuantbenchError as exc:
        raise pytest.UsageError(exc.line()) from None
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    threads = config.getoption("qb_threads") or (None if _device(config).type == "cuda" else 1)
    if threads:
        import torch
        torch.set_num_threads(threads)  # 1 on CPU: stability over peak speed (docs/gate.md has the figures)
    from . import environment
    state.telemetry_start = environment.gpu_telemetry()
    _open_history(config, state)
    if (config.getoption("qb_history") or config.getoption("qb_gate")) and not config.getoption("benchmark_json"):
        # History and gate read the JSON pytest-benchmark writes (it includes every round time).
        # A scratch copy: removed when pytest ends, unless storing the history failed (then it is the run).
        state.scratch = Path(tempfile.mkdtemp(prefix="quantbench-"))
        config.option.benchmark_json = state.scratch / "run.json"


def _read_matrix(config, state: RunState) -> None:
    """Options -> the case matrix, checked here, not while collecting: a UsageError raised in
    pytest_generate_tests shows as a collection error with a traceback, one raised here as one line."""
    from .bench.selection import parse_pairs
    from .bench.serving import serving_pairs
    pairs = parse_pairs(config.getoption("qb_formats"), config.getoption("qb_runtimes"))
    state.serving_pairs = serving_pairs(pairs)
    state.pairs = [pair for pair in pairs if pair not in state.serving_pairs]
    defaults = _defaults(config)
    state.batches = parse_int_list(config.getoption("qb_batch") or defaults["batch"], "--qb-batch")
    state.prompts = parse_int_list(config.getoption("qb_prompt") or defaults["prompt"], "--qb-prompt")
    state.sources = _sources(config)
    state.notes = _own_code_notes(state.sources)
    state.kernel_cases = _kernel_cases(config)
    from .bench.budgets import load_budgets
    state.budget = load_budgets(_device(config).type, case_s=config.getoption("qb_case_budget"),
                                engine_start_s=config.getoption("qb_start_budget"))
    state.serving = _serving_plan(config, state)


def _own_code_notes(sources) -> list[str]:
    """A --model-dir whose config.json names its own modeling code (T15): said, not timed silently as stock."""
    from .errors import QuantbenchError
    from .formats.checkpoints import detect_checkpoint
    notes = []
    for source in sources:
        try:
            notice = source.path and detect_checkpoint(source.path).own_code
        except QuantbenchError:
            continue  # its cases state what is wrong with it
        if notice:
            notes.append(notice)
    return notes


def _serving_plan(config, state: RunState):
    """The serving sweep from the options and the device's defaults; the SLO from the thresholds file."""
    from .bench.serving import ServingPlan
    from .gate import load_thresholds
    defaults, device = _defaults(config), _device(config).type
    concurrency = config.getoption("qb_serve_concurrency") or defaults["serve_concurrency"]
    concurrency = parse_int_list(FULL_SERVE_SWEEP if concurrency == "full" else concurrency, "--qb-serve-concurrency")
    rates = _rates(config.getoption("qb_serve_rate"))
    engine = config.getoption("qb_serve_engine")
    slo = load_thresholds(config.getoption("qb_thresholds") or THRESHOLDS).slo.get("gpu" if device == "cuda" else "cpu")
    keep = config.getoption("qb_serve_keep")
    return ServingPlan(
        concurrency=concurrency, rates=rates,
        input_len=config.getoption("qb_serve_input_len") or defaults["serve_input_len"],
        output_len=config.getoption("qb_serve_output_len") or defaults["serve_output_len"],
        max_num_seqs=config.getoption("qb_serve_max_seqs") or max(concurrency),
        num_prompts=config.getoption("qb_serve_prompts"),
        rounds=config.getoption("qb_rounds") or defaults["serve_rounds"],
        warmup_rounds=defaults["serve_warmup"], prompts_floor=defaults["serve_prompts_floor"],
        enforce_eager=defaults["serve_eager"] if engine == "auto" else engine == "eager",
        max_model_len=config.getoption("qb_serve_max_model_len"), port=config.getoption("qb_serve_port"),
        slo=slo or {}, keep=Path(keep).resolve() if keep else None,
        start_budget_s=state.budget.server_s, case_budget_s=state.budget.case_s)


def _rates(text: str) -> list[float]:
    try:
        rates = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--qb-serve-rate must be a comma-separated list of requests/s, got {text!r}") from None
    if any(not r > 0 for r in rates):
        raise ValueError(f"--qb-serve-rate must be positive requests/s, got {text!r}")
    return rates


def _read_gate_options(config, state: RunState) -> None:
    from .gate import load_thresholds, parse_fail_on
    state.fail_on = parse_fail_on(config.getoption("qb_gate_fail_on"), "--qb-gate-fail-on")
    if config.getoption("qb_gate"):
        state.thresholds = load_thresholds(config.getoption("qb_thresholds") or THRESHOLDS)


def _open_history(config, state: RunState) -> None:
    """A folder that cannot be written is found out now, not after an hour of benchmarks. A database
    that cannot be used now (unreachable, a refused login, a newer schema) is said at the start and
    tried again at the end: the run goes on and its JSON is kept either way."""
    from . import history
    from .errors import HistoryUnavailable, QuantbenchError
    root = config.getoption("qb_history")
    if not root:
        return
    try:  # a URL it cannot store in (mysql://...) was an INTERNALERROR traceback (found by tests/test_bad_inputs.py)
        state.store = history.open_store(root)
        state.store.check()
    except HistoryUnavailable as exc:
        state.store_warning = exc.line()
    except QuantbenchError as exc:
        raise pytest.UsageError(f"--qb-history {exc.line()}") from None


def _read_shard(config, state: RunState) -> None:
    from .bench.shards import parse_shard
    state.shard = parse_shard(config.getoption("qb_shard"), config.getoption("qb_group"), os.environ)


def pytest_report_header(config):
    state = config.stash.get(STATE, None)
    lines = []
    if state is not None and state.store_warning:
        lines.append(f"quantbench: WARNING: history not usable now ({state.store_warning}); the run goes on, "
                     "its JSON is kept, and storing is tried again at the end")
    if state is not None and state.shard is not None:
        lines.append(f"quantbench: {state.shard.describe()}")
    return lines


def _sources(config):
    from .bench.pool import ModelSource
    dirs = config.getoption("model_dir")
    models = config.getoption("qb_models")
    if models is None:
        models = "" if dirs else _defaults(config)["models"]
    sources = [ModelSource.from_spec(m.strip()) for m in models.split(",") if m.strip()]
    return sources + [ModelSource.from_dir(d) for d in dirs]


def pytest_generate_tests(metafunc):
    if "qb_kernel_case" in metafunc.fixturenames:
        _parametrize_kernels(metafunc)
    if "qb_serving_case" in metafunc.fixturenames:
        _parametrize_serving(metafunc)
    if "qb_case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    defaults = _defaults(config)
    new_tokens = config.getoption("qb_new_tokens") or defaults["new_tokens"]

    state = run_state(config)
    cases = build_cases(state.sources, _formats_for, state.pairs, state.batches, state.prompts, new_tokens)
    metafunc.parametrize("qb_case", cases, ids=[c.id for c in cases])


def _formats_for(source):
    from .errors import QuantbenchError
    try:
        return source.formats()
    except QuantbenchError as exc:
        raise RuntimeError(exc.line()) from None


def _parametrize_serving(metafunc):
    from .bench.serving import build_serving_cases
    state = run_state(metafunc.config)
    cases = build_serving_cases(state.sources, _formats_for, state.serving_pairs, state.serving)
    metafunc.parametrize("qb_serving_case", cases, ids=[c.id for c in cases])


def _kernel_cases(config):
    from .bench.kernel_runner import CPU_M, GPU_M, kernel_cases
    from .kernels import KERNELS
    cuda = _device(config).type == "cuda"
    models = config.getoption("qb_kernel_models") or ("qwen2.5-3b,mistral-7b" if cuda else "tiny,tinyllama-1.1b")
    names = config.getoption("qb_kernels")
    names = list(KERNELS) if names == "all" else [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in KERNELS]
    if unknown:
        raise pytest.UsageError(f"unknown kernel(s) {unknown}. Fix: use one of: {', '.join(KERNELS)}")
    ms = parse_int_list(config.getoption("qb_m") or (GPU_M if cuda else CPU_M), "--qb-m")
    return kernel_cases([m.strip() for m in models.split(",") if m.strip()], names, ms)


def _parametrize_kernels(metafunc):
    cases = run_state(metafunc.config).kernel_cases
    metafunc.parametrize("qb_kernel_case", cases, ids=[c.id for c in cases])


@pytest.hookimpl(trylast=True)  # after -k / -m: a shard's plan holds the cases the run selected
def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER") and any("qb_case" in getattr(i, "fixturenames", ()) for i in items):
        raise pytest.UsageError("quantbench benchmarks must not run in parallel on one device: drop -n/xdist")
    _time_rounds_on_the_round_clock(config, items)
    shard = run_state(config).shard
    if shard is not None:
        keep, drop = shard.select(items)
        if drop:
            config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _time_rounds_on_the_round_clock(config, items) -> None:
    """The cases that run a model (those with qb_pool) time their rounds on measure.round_clock: the host clock, or
    for a runtime in a child process the replay of that child's own seconds; serving cases on the client's own
    durations. A --benchmark-timer the user chose is kept."""
    from pytest_benchmark.timers import default_timer
    from pytest_benchmark.utils import NameWrapper

    from .measure import round_clock
    if config.getoption("benchmark_timer", None) not in (None, str(NameWrapper(default_timer))):
        return
    from .bench.serving import client_clock
    for item in items:
        timed = any("timer" in mark.kwargs for mark in item.iter_markers("benchmark"))
        names = getattr(item, "fixturenames", ())
        if "qb_serving_case" in names and not timed:  # a serving round is the client's own duration of it
            item.add_marker(pytest.mark.benchmark(timer=client_clock))
        elif "qb_pool" in names and not timed:
            item.add_marker(pytest.mark.benchmark(timer=round_clock))


@pytest.fixture(scope="session")
def qb_device(pytestconfig):
    return _device(pytestconfig)


@pytest.fixture(scope="session")
def qb_pool(pytestconfig, qb_device):
    from .bench.pool import ModelPool
    from .runtimes import Shapes
    state = run_state(pytestconfig)
    new_tokens = pytestconfig.getoption("qb_new_tokens") or _defaults(pytestconfig)["new_tokens"]
    pool = ModelPool(qb_device, Shapes(max(state.batches), max(state.prompts), new_tokens),
                     isolate=pytestconfig.getoption("qb_isolate"), budget=state.budget)
    yield pool
    pool.release()


@pytest.fixture(scope="session")
def qb_options(pytestconfig, qb_device):
    from .bench.runner import RunOptions
    rounds = pytestconfig.getoption("qb_rounds") or _defaults(pytestconfig)["rounds"]
    return RunOptions(device=qb_device, rounds=rounds, warmup_rounds=_defaults(pytestconfig)["warmup"],
                      kernel_rounds=pytestconfig.getoption("qb_rounds") or _defaults(pytestconfig)["kernel_rounds"],
                      inject_slowdown=pytestconfig.getoption("qb_inject_slowdown"),
                      budget=run_state(pytestconfig).budget)


@pytest.fixture(scope="session")
def qb_servers(pytestconfig, qb_device, qb_pool):
    """One vLLM server at a time for the serving suite; the generation suite's engine is closed first (on a
    GPU it holds most of the device's memory)."""
    from .bench.serving import ServerPool
    qb_pool.release()
    servers = ServerPool(qb_device, run_state(pytestconfig).serving)
    yield servers
    servers.close()


@pytest.fixture(scope="session")
def qb_kernel_cache():
    from .bench.kernel_runner import PreparedCache
    return PreparedCache()


@pytest.fixture(scope="session")
def qb_peaks(pytestconfig, qb_device):
    """Measured ceilings of this device: from the history folder if stored, else measured now
    (and stored when --qb-history is given)."""
    from . import environment
    from .bench.peaks import measure_peaks
    from .errors import HistoryUnavailable
    from .history import ceilings
    state = run_state(pytestconfig)
    signature = environment.collect()["signature"]
    measured, usable = None, state.store is not None and not state.store_warning
    try:
        measured = state.store.load_peaks(signature) if usable else None
        if measured is None:
            measured = measure_peaks(qb_device)
            if usable:
                state.store.save_peaks(signature, measured)
    except HistoryUnavailable as exc:  # the database went away: the ceilings are measured and kept in the run
        state.store_warning = exc.line()
        measured = measured or measure_peaks(qb_device)
    device = environment.device_info()
    measured = dict(measured)
    measured["datasheet"] = ceilings.datasheet_peaks(device.get("gpu"))
    run_state(pytestconfig).peaks = measured
    return measured


@pytest.fixture(scope="session")
def qb_states(pytestconfig):
    return run_state(pytestconfig).states


def pytest_collection_finish(session):
    """--qb-plan: the selected cases' predicted seconds, then the end of the run (nothing is measured)."""
    config = session.config
    device = config.getoption("qb_plan")
    if not device:
        _open_journal(session)
        _start_progress(session)
        return
    from .bench import plan
    from .bench.shards import deal, unit_of
    state, defaults = run_state(config), _defaults(config)
    items = [item for item in session.items if _case_of(item)[0] is not None]
    slots = config.getoption("qb_plan_slots")
    # the deal --qb-shard I/N makes of the same cases: each shard planned as the slot it will run in
    shard_of = deal([unit_of(item) for item in items], slots)
    writer = config.get_terminal_writer()
    for shard in range(1, slots + 1):
        cases = {name: [] for name in ("generation", "serving", "kernels")}
        for item, dealt in zip(items, shard_of):
            case, kernel = _case_of(item)
            if dealt == shard:
                cases["kernels" if kernel else "serving" if hasattr(case, "num_prompts") else "generation"].append(case)
        rows = plan.plan(cases["generation"], cases["serving"], cases["kernels"], plan.COSTS[device],
                         config.getoption("qb_rounds") or defaults["rounds"], defaults["warmup"],
                         state.serving.rounds, state.serving.warmup_rounds)
        for row in rows:
            writer.line(f"plan {row.seconds:8.1f} s  {row.case}  ({row.why})")
        which = f" shard {shard}/{slots}" if slots > 1 else ""
        writer.line(f"quantbench plan ({device}){which}: {plan.summary(rows)}")
    pytest.exit("quantbench plan printed; nothing was run", returncode=0)


def _start_progress(session) -> None:
    from .bench.progress import Progress
    config = session.config
    state = run_state(config)
    state.progress_kinds = {item.nodeid: _progress_kind(item) for item in session.items
                            if _case_of(item)[0] is not None}
    state.progress = Progress(list(state.progress_kinds.values())) if state.progress_kinds else None
    state.progress_started = state.progress_said = time.monotonic()
    if state.progress is not None and not config.pluginmanager.has_plugin("quantbench-progress"):
        config.pluginmanager.register(ProgressLine(config), "quantbench-progress")


def _progress_kind(item) -> str:
    """Cases of one kind cost about the same: a generation case by runtime and phase, a kernel case by kernel,
    a serving case by server."""
    case, kernel = _case_of(item)
    what = case.kernel if kernel else f"{case.runtime}:{getattr(case, 'phase', 'serving')}"
    return f"{item.module.__name__}:{what}"


class ProgressLine:
    """Each case's time from pytest's log start to its log finish, and the progress line printed there: outside the
    capture of the case's setup, call and teardown (a line written from a teardown went into the case's captured
    output, shown only if it failed)."""

    def __init__(self, config):
        self.config = config

    def pytest_runtest_logstart(self, nodeid, location):
        run_state(self.config).case_started = time.monotonic()

    def pytest_runtest_logfinish(self, nodeid, location):
        _progress_case_ended(self.config, nodeid, time.monotonic() - run_state(self.config).case_started)


def _progress_case_ended(config, nodeid: str, seconds: float | None) -> None:
    """One case of the run ended (timed, stated, or passed over at the deadline): the progress line, at most every
    --qb-progress seconds and after the last case."""
    state = run_state(config)
    progress, kind = state.progress, state.progress_kinds.get(nodeid)
    if progress is None or kind is None:
        return
    progress.finish(kind, seconds)
    every, now = config.getoption("qb_progress"), time.monotonic()
    if every <= 0 or (now - state.progress_said < every and progress.done < progress.total):
        return
    state.progress_said = now
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(progress.line(now - state.progress_started))


def _open_journal(session) -> None:
    """The run's journal beside its --benchmark-json (history.journal): a header now, each case as it ends."""
    from .history import journal
    config, state = session.config, run_state(session.config)
    bench_session = getattr(config, "_benchmarksession", None)
    if bench_session is None or bench_session.disabled or not config.option.benchmark_json:
        return
    cases = state.case_ids = [item.nodeid for item in session.items if _case_of(item)[0] is not None]
    if not cases:
        return
    try:
        state.journal = journal.Journal(_journal_location(config, state))
        from datetime import datetime

        import pytest_benchmark

        from .history import redact
        commit_info = config.hook.pytest_benchmark_generate_commit_info(config=config)
        config.hook.pytest_benchmark_update_commit_info(config=config, commit_info=commit_info)
        state.journal.append({"kind": "header", "datetime": datetime.now(UTC).isoformat(),
                              "version": pytest_benchmark.__version__,
                              "machine_info": bench_session.get_machine_info(), "commit_info": commit_info,
                              "args": [redact(arg) for arg in config.invocation_params.args], "cases": cases})
    except OSError as exc:  # a journal that cannot be written costs the run nothing but the journal
        state.journal = None
        config.get_terminal_writer().line(f"quantbench: no journal ({exc}): a killed run keeps nothing", yellow=True)


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """After each case's teardown: the timed entries and stated records it added, into the journal."""
    yield
    _journal_new_entries(item.config)


def _journal_location(config, state) -> Path:
    """In the history folder's .journals/ when the history is a folder (where `quantbench history` lists it if the
    run never ends: a kill -9 beside a --benchmark-json of its own was found by nothing), else beside
    --benchmark-json; never in an unannounced temp folder."""
    from .history import FolderStore, journal
    if isinstance(state.store, FolderStore):
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        return state.store.root / journal.JOURNALS / f"{stamp}-{os.getpid()}{journal.SUFFIX}"
    return journal.journal_path(config.option.benchmark_json)


def _close_journal(config, state) -> None:
    """The run's JSON written: its journal goes. Not written (pytest-benchmark's writer failed): the journal stays,
    and the terminal says how to store what it holds."""
    if state.journal is None:
        return
    _journal_new_entries(config)
    written = Path(str(config.option.benchmark_json))
    state.journal.close(remove=written.is_file() and written.stat().st_size > 0)
    if state.journal.path.exists():
        state.journal_left = state.journal.path
    state.journal = None


def _journal_new_entries(config) -> None:
    state = config.stash.get(STATE, None)
    if state is None or state.journal is None:
        return
    benches, records = config._benchmarksession.benchmarks, state.states.records
    done_benches, done_records = state.journaled
    try:
        for bench in benches[done_benches:]:
            if not bench.has_error:
                state.journal.append({"kind": "case", "bench": bench.as_dict(include_data=True)})
        for record in records[done_records:]:
            state.journal.append({"kind": "state", "record": record})
    except OSError as exc:
        config.get_terminal_writer().line(f"quantbench: journal stopped ({exc})", yellow=True)
        state.journal = None
    state.journaled = (len(benches), len(records))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """Past --qb-deadline a case is not run: it is stated ``not-reached`` (so the history, the gate and the guide
    say what the run did not measure) and pytest goes on to the next, which ends the same way, and then to its
    normal end, where pytest-benchmark writes the JSON and the plugin stores it."""
    state = run_state(item.config)
    if state.deadline is None or time.monotonic() < state.deadline:
        return None
    case, kernel = _case_of(item)
    reason = (f"not reached: --qb-deadline {item.config.getoption('qb_deadline'):g} s passed before this case "
              "started")
    if case is not None:
        (state.states.add_kernel if kernel else state.states.add)(case, "not-reached", reason, item.nodeid)
    state.not_reached += 1
    _progress_case_ended(item.config, item.nodeid, None)
    return True


def _case_of(item):
    """The quantbench case an item runs, and whether it is a kernel-suite case; (None, False) for a plain test."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    for name, kernel in (("qb_case", False), ("qb_serving_case", False), ("qb_kernel_case", True)):
        if name in params:
            return params[name], kernel
    return None, False


def pytest_benchmark_update_machine_info(config, machine_info):
    from . import environment
    machine_info["quantbench"] = {"schema_version": SCHEMA_VERSION, **environment.collect(),
                                  "git": environment.git_state(),
                                  "telemetry_start": run_state(config).telemetry_start}


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """The run's own section of the JSON; storing and gating it wait for pytest_sessionfinish."""
    from . import environment, history
    state = run_state(config)
    for bench in output_json.get("benchmarks", []):
        if not bench.get("extra_info"):  # cut off inside its rounds: its partial times are no result
            bench["extra_info"] = {"state": State.INTERRUPTED, "reason": history.INTERRUPTED_REASON}
    from .bench.saving import interruption
    stopped = interruption(config, state.case_ids, output_json.get("benchmarks", []), state.states.records)
    end = environment.gpu_telemetry()
    output_json["quantbench"] = {
        "schema_version": SCHEMA_VERSION,
        "states": state.states.records,
        "telemetry_end": end,
        "throttled": any(t.get("throttled") for t in state.telemetry_start + end),
        "args": [history.redact(arg) for arg in config.invocation_params.args],  # no password in a result
        "peaks": state.peaks,
        **({"notes": state.notes} if state.notes else {}),
        **({"interrupted": stopped} if stopped else {}),
    }
    from .report.crossover import crossover, kernel_frame
    kernels_df = kernel_frame(output_json.get("benchmarks", []))
    if not kernels_df.empty:
        state.crossover = crossover(kernels_df)
        output_json["quantbench"]["crossover"] = state.crossover.to_dict(orient="records")
    if state.shard is not None:
        output_json["quantbench"]["shard"] = state.shard.record()
    if state.output_json is None:  # --benchmark-save calls this hook a second time for the same run
        state.output_json = output_json


def _store(config, state: RunState) -> None:
    from .errors import HistoryUnavailable
    if state.store is None or state.output_json is None:
        return
    try:
        state.store.close()  # a fresh connection: one held through hours of benchmarks may have been dropped
        state.saved, _ = state.store.save(state.output_json)
    except HistoryUnavailable as exc:  # unreachable, refused, newer schema: --benchmark-json keeps the run
        state.save_error = exc.line()
    except OSError as exc:  # a full disk must not lose the run: --benchmark-json is written already
        state.save_error = f"{exc.filename or state.store.label}: {exc.strerror or exc}"


def _gate(config, state: RunState) -> None:
    from . import gate, history
    from .errors import QuantbenchError
    baseline, current = config.getoption("qb_gate"), state.output_json
    if not baseline or current is None:
        return
    store = state.store or history.open_store("history")
    try:
        refs = gate.resolve_baselines(baseline, store, current, state.saved)
        runs = history.collapse(history.read_all(store, refs))
        baselines = [payload for _, payload in runs]
        result = gate.run_gate(current, baselines, state.thresholds, state.fail_on,
                               upgrade=gate.crosses_upgrade(baseline, current, baselines))
        state.gate_result = (", ".join(where for where, _ in runs), result)
    except QuantbenchError as exc:
        state.gate_result = (None, exc)


def pytest_unconfigure(config):
    state = config.stash.get(STATE, None)
    if state is not None and state.store is not None:
        state.store.close()
    if state is not None and state.scratch is not None and not state.save_error:
        import shutil
        shutil.rmtree(state.scratch, ignore_errors=True)


def _write_run_without_measurements(config) -> None:
    """pytest-benchmark writes no JSON when no case was timed ("Not saving anything"), but a run whose
    every case was stated (all unsupported on this machine, say) is a result: the "unsupported: why"
    must reach the history, the gate and the guide, not only the terminal. Its JSON is made through
    pytest-benchmark's own hooks, as handle_saving would, with an empty benchmark list (which also
    stores it in the history: see pytest_benchmark_update_json)."""
    bench_session, states = getattr(config, "_benchmarksession", None), run_state(config).states
    if (bench_session is None or bench_session.disabled or bench_session.benchmarks or states is None
            or not states.records or not bench_session.json):
        return
    machine_info = bench_session.get_machine_info()
    commit_info = config.hook.pytest_benchmark_generate_commit_info(config=config)
    config.hook.pytest_benchmark_update_commit_info(config=config, commit_info=commit_info)
    output_json = config.hook.pytest_benchmark_generate_json(config=config, benchmarks=[], include_data=True,
                                                            machine_info=machine_info, commit_info=commit_info)
    config.hook.pytest_benchmark_update_json(config=config, benchmarks=[], output_json=output_json)
    bench_session.save_json(output_json)


def pytest_sessionfinish(session, exitstatus):
    """After pytest-benchmark's own saving (its hookwrapper): the run is written; store it, then gate it."""
    config, state = session.config, run_state(session.config)
    _write_run_without_measurements(config)
    _close_journal(config, state)
    _store(config, state)
    _gate(config, state)
    if state.save_error:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if state.gate_result is None:
        return
    _, result = state.gate_result
    if isinstance(result, Exception) or result.exit_code:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    summary = config.getoption("qb_gate_summary")
    if summary and not isinstance(result, Exception):
        Path(summary).write_text(result.markdown(), encoding="utf-8")


def pytest_terminal_summary(terminalreporter, config):
    state = run_state(config)
    table = state.crossover
    if table is not None and not table.empty:
        terminalreporter.section("quantbench: crossover M (quantized kernel stops beating torch-fp16)")
        terminalreporter.write_line(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    for note in state.notes:
        terminalreporter.write_line(f"quantbench: NOTE: {note}", yellow=True)
    if state.journal_left:
        terminalreporter.write_line(f"quantbench: the run's JSON was not written; its finished cases are in "
                                    f"{state.journal_left}: store them with `quantbench history --add "
                                    f"{state.journal_left}`", red=True)
    if state.not_reached:
        terminalreporter.write_line(f"quantbench: --qb-deadline {config.getoption('qb_deadline'):g} s reached: "
                                    f"{state.not_reached} case(s) not run, stated not-reached", yellow=True)
    saved = state.saved
    if saved:
        terminalreporter.write_line(f"quantbench: history saved to {saved}")
    failed = state.save_error
    if failed:
        from .history import redact
        where = config.getoption("qb_history")
        # a retry command must work as printed: a URL's password is never printed, so it goes by the environment
        target = ("env:QUANTBENCH_HISTORY (set it to your history URL)" if redact(where) != where else where)
        terminalreporter.write_line(f"quantbench: history NOT saved ({failed}); this run is in "
                                    f"{config.option.benchmark_json}: store it with `quantbench history --history "
                                    f"{target} --add FILE` once fixed", red=True)
    if state.gate_result is None:
        return
    path, result = state.gate_result
    if isinstance(result, Exception):
        terminalreporter.write_line(f"quantbench gate: error: {result.line()}", red=True)
        return
    terminalreporter.section(f"quantbench gate vs {path}")
    terminalreporter.write_line(result.table())
    bad = [d for d in result.decisions if d.state == "regressed"]
    for d in bad:
        terminalreporter.write_line("REGRESSED " + d.message(), red=True)
    if blind := result.blind_spots():
        terminalreporter.write_line(f"quantbench gate: {blind}")
    terminalreporter.write_line("quantbench gate: " + ("FAILED" if result.exit_code else "passed") + " "
                                + str(result.counts()), red=bool(result.exit_code), green=not result.exit_code)
