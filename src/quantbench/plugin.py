"""The pytest plugin: options, the parametrized matrix, and what goes into the benchmark JSON.

Loaded by the repository's conftest.py (``pytest_plugins``), so plain ``pytest benchmarks/``
works as well as the nox sessions.
"""

from __future__ import annotations

import os

import pytest

from .cases import CPU_DEFAULTS, GPU_DEFAULTS, build_cases, parse_int_list

SCHEMA_VERSION = 1


def pytest_addoption(parser):
    group = parser.getgroup("quantbench")
    group.addoption("--qb-models", default=None, help="model specs, comma-separated (CPU default: tiny)")
    group.addoption("--model-dir", action="append", default=[], metavar="PATH",
                    help="benchmark a checkpoint directory; format detected from config.json (repeatable)")
    group.addoption("--qb-formats", default="all", help="formats, comma-separated, or 'all'")
    group.addoption("--qb-batch", default=None, help="batch sizes, comma-separated")
    group.addoption("--qb-prompt", default=None, help="prompt lengths in tokens, comma-separated")
    group.addoption("--qb-new-tokens", type=int, default=None, help="decode tokens per round")
    group.addoption("--qb-rounds", type=int, default=None, help="measured rounds per case")
    group.addoption("--qb-device", default="auto", choices=("auto", "cpu", "cuda"))
    group.addoption("--qb-inject-slowdown", type=float, default=0.0,
                    help="TEST ONLY: stretch every timed region by this fraction (e.g. 0.10)")


def _device(config):
    import torch
    choice = config.getoption("qb_device")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--qb-device cuda: no CUDA device is visible to torch")
    return torch.device(choice)


def _defaults(config):
    return GPU_DEFAULTS if _device(config).type == "cuda" else CPU_DEFAULTS


def pytest_configure(config):
    config.addinivalue_line("markers", "quantbench: a generated quantbench benchmark case")
    from .errors import QuantbenchError
    from .formats import parse_formats
    try:
        config._qb_formats = parse_formats(config.getoption("qb_formats"))
        defaults = _defaults(config)
        config._qb_batches = parse_int_list(config.getoption("qb_batch") or defaults["batch"], "--qb-batch")
        config._qb_prompts = parse_int_list(config.getoption("qb_prompt") or defaults["prompt"], "--qb-prompt")
    except QuantbenchError as exc:
        raise pytest.UsageError(exc.line()) from None
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    from .runner import StateRecorder
    config._qb_states = StateRecorder()
    from . import environment
    config._qb_telemetry_start = environment.gpu_telemetry()


def _sources(config):
    from .errors import QuantbenchError
    from .pool import ModelSource
    dirs = config.getoption("model_dir")
    models = config.getoption("qb_models")
    if models is None:
        models = "" if dirs else _defaults(config)["models"]
    try:
        sources = [ModelSource.from_spec(m.strip()) for m in models.split(",") if m.strip()]
    except QuantbenchError as exc:
        raise pytest.UsageError(exc.line()) from None
    return sources + [ModelSource.from_dir(d) for d in dirs]


def pytest_generate_tests(metafunc):
    if "qb_case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    defaults = _defaults(config)
    new_tokens = config.getoption("qb_new_tokens") or defaults["new_tokens"]

    def formats_for(source):
        from .errors import QuantbenchError
        try:
            return source.formats()
        except QuantbenchError as exc:
            raise RuntimeError(exc.line()) from None

    cases = build_cases(_sources(config), formats_for, config._qb_formats, config._qb_batches,
                        config._qb_prompts, new_tokens)
    metafunc.parametrize("qb_case", cases, ids=[c.id for c in cases])


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER") and any("qb_case" in getattr(i, "fixturenames", ()) for i in items):
        raise pytest.UsageError("quantbench benchmarks must not run in parallel on one device: drop -n/xdist")


@pytest.fixture(scope="session")
def qb_device(pytestconfig):
    return _device(pytestconfig)


@pytest.fixture(scope="session")
def qb_pool(qb_device):
    from .pool import ModelPool
    pool = ModelPool(qb_device)
    yield pool
    pool.release()


@pytest.fixture(scope="session")
def qb_options(pytestconfig, qb_device):
    from .runner import RunOptions
    rounds = pytestconfig.getoption("qb_rounds") or _defaults(pytestconfig)["rounds"]
    return RunOptions(device=qb_device, rounds=rounds,
                      inject_slowdown=pytestconfig.getoption("qb_inject_slowdown"))


@pytest.fixture(scope="session")
def qb_states(pytestconfig):
    return pytestconfig._qb_states


def pytest_benchmark_update_machine_info(config, machine_info):
    from . import environment
    machine_info["quantbench"] = {"schema_version": SCHEMA_VERSION, **environment.collect(),
                                  "git": environment.git_state(),
                                  "telemetry_start": getattr(config, "_qb_telemetry_start", [])}


def pytest_benchmark_update_json(config, benchmarks, output_json):
    from . import environment
    end = environment.gpu_telemetry()
    start = getattr(config, "_qb_telemetry_start", [])
    output_json["quantbench"] = {
        "schema_version": SCHEMA_VERSION,
        "states": config._qb_states.records,
        "telemetry_end": end,
        "throttled": any(t.get("throttled") for t in start + end),
    }
