"""The sweep of hostile and careless inputs (../shared/research/bad-inputs.md, 51 tries at 3ae1c25) kept as a test.

Every try runs on every CI run, here or in the test named for it in ELSEWHERE (a try that needs a measured run, a
PostgreSQL server or a signal lives beside the code it pins, so it is not run twice). Each try here asserts what
the whole sweep promises: the documented exit code, its one error line saying what is wrong (and the fix where
there is one), no traceback, no password in any output or file, nothing half-written left behind. The CLI tries
run in this process (quantbench.cli.main); the pytest ones, whose errors come at configuration, run as pytest
processes two at a time (--collect-only: the error is raised before any case). A hypothesis fuzzer over the same
two surfaces follows, bounded in time."""

from __future__ import annotations

import ast
import json
import math
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from quantbench import cli, history

from .conftest import REPO
from .test_history import payload

pytestmark = pytest.mark.stack_independent  # the CLI's and the plugin's option handling: libraries do not matter

SECRET = "s3cret-Pw"  # in every URL a try passes: it must appear in no output and no file


@dataclass(frozen=True)
class Try:
    id: str
    argv: tuple[str, ...]   # {placeholders} filled from the scratch world below
    rc: int
    says: str               # a substring of its error line (or of its output where it passes)


# quantbench CLI tries: gate, report, history, inspect (T10-T18 by inspect; their pytest runs: ELSEWHERE)
CLI_TRIES = [
    Try("T10", ("inspect", "{md}/nope"), 2, "nope: not a directory. Fix: pass the folder"),
    Try("T11", ("inspect", "{md}/empty"), 2, "config.json: missing config.json. Fix:"),
    Try("T12", ("inspect", "{md}/pickle"), 2, "no *.safetensors weights (quantbench loads safetensors only). Fix:"),
    Try("T13", ("inspect", "{md}/badjson"), 2, "config.json is not valid JSON"),
    Try("T14", ("inspect", "{md}/unkq"), 2, "unknown quant_method 'hqq'. Fix:"),
    Try("T15", ("inspect", "{md}/automap"), 0, "auto_map names the checkpoint's own code"),
    Try("T16", ("inspect", "{md}/trunc"), 2, "truncated safetensors file"),
    Try("T17", ("inspect", "{md}/lie"), 2, "its offsets hold"),
    Try("T18", ("inspect", "{md}/list"), 2, "config.json holds a JSON list, not an object"),
    Try("T19", ("gate", "--current", "{cur}", "--baseline", "latest", "--history", "{hist}", "--thresholds",
                "{th}/typo.toml"), 2, "unknown key(s) 'max_regresion' in [defaults]"),
    Try("T20", ("gate", "--current", "{cur}", "--baseline", "latest", "--history", "{hist}", "--thresholds",
                "{th}/neg.toml"), 2, "max_regression must be a fraction in (0, 1), got -0.05"),
    Try("T21", ("gate", "--current", "{cur}", "--baseline", "latest", "--history", "{hist}", "--thresholds",
                "{th}/intpattern.toml"), 2, "invalid thresholds file"),
    Try("T22a", ("gate", "--current", "{cur}", "--baseline", "latest", "--history", "{hist}", "--thresholds",
                 "{th}/defaultsmetrics.toml"), 2, "unknown key(s) 'metrics' in [defaults]"),
    Try("T22", ("gate", "--current", "{cur}", "--baseline", "latest", "--history", "{hist}", "--thresholds",
                "{th}/metrics.toml"), 2, "invalid thresholds file"),
    Try("T22b", ("gate", "--current", "{cur}", "--baseline", "latest", "--history", "{hist}", "--thresholds",
                 "{th}/sloscalar.toml"), 2, "[slo.cpu] must be a table, got 5"),
    Try("T25", ("gate", "--current", "{cur}", "--baseline", "{g}/corrupt.json"), 2, "corrupt JSON"),
    Try("T26", ("gate", "--current", "{g}/empty.json", "--baseline", "{first}"), 2, "empty file. Fix:"),
    Try("T27", ("gate", "--current", "{cur}", "--baseline", "{g}/package.json"), 2,
        "not a pytest-benchmark JSON file"),
    Try("T28", ("gate", "--current", "{cur}", "--baseline", "{g}/othermachine.json"), 1, "--allow-incomparable"),
    Try("T29", ("gate", "--current", "{cur}", "--baseline", "latest", "--history", "{scratch}/no/such/history"), 2,
        "no such history folder"),
    Try("T29b", ("gate", "--current", "{cur}", "--baseline", "latest", "--history", "{scratch}/h_bsae",
                 "--if-no-baseline", "pass"), 2, "no such history folder"),
    Try("T30", ("gate", "--current", "latest", "--baseline", "previous", "--history", "{scratch}/h_empty"), 2,
        "no history files"),
    Try("T31", ("report", "--history", "{hist}", "--out", "/proc/quantbench-report"), 2,
        "Fix: pass a writable path"),
    Try("T32", ("report", "--history", "{hist}", "--out", "{scratch}/afile"), 2, "Fix: pass a writable path"),
    # added: a password URL on every command that takes a history
    Try("U01", ("history", "--history", f"postgresql+psycopg://u:{SECRET}@127.0.0.1:1/x"), 2,
        "postgresql+psycopg://u:***@127.0.0.1:1/x"),
    Try("U02", ("gate", "--current", "{cur}", "--baseline", "latest", "--history",
                f"postgresql://u:{SECRET}@127.0.0.1:1/x"), 2, "u:***@127.0.0.1"),
    Try("U03", ("report", "--history", f"mysql://u:{SECRET}@127.0.0.1:1/x", "--out", "{scratch}/rep"), 2,
        "mysql://u:***@127.0.0.1:1/x"),
    # found by the fuzzer below: a run whose cases lack the guide's fields was a KeyError inside pandas
    Try("U05", ("report", "{cur}", "--out", "{scratch}/rep5"), 2, "has no 'prompt_len': not a quantbench generation"),
]

# pytest tries: the benchmark command line, refused at configuration
PYTEST_TRIES = [
    Try("T01", ("--qb-formats", "bogus"), 4, "unknown format 'bogus'. Fix: use one of:"),
    Try("T02", ("--qb-formats", "bf16", "--qb-runtimes", "bogus"), 4, "unknown runtime 'bogus'. Fix: use one of:"),
    Try("T03", ("--qb-formats", "bf16@nosuch"), 4, "unknown runtime suffix '@nosuch' (the format 'bf16' is known)"),
    Try("T04", ("--qb-batch", "0"), 4, "--qb-batch must be positive integers, got '0'. Fix:"),
    Try("T05", ("--qb-batch", "-1"), 4, "--qb-batch must be positive integers, got '-1'. Fix:"),
    Try("T06", ("--qb-batch", "abc"), 4, "--qb-batch must be a comma-separated list of integers, got 'abc'. Fix:"),
    Try("T09", ("--qb-new-tokens", "0"), 4, "argument --qb-new-tokens: must be a positive integer, got '0'"),
    Try("T33", ("--qb-history", "/proc/quantbench-history"), 4, "cannot create it"),
    Try("T34", ("--qb-history", "{scratch}/afile"), 4, "a file, not a folder. Fix:"),
    Try("T41", ("--qb-shard", "3/2", "--qb-group", "g1"), 4, "--qb-shard 3/2: not I/N with 1 <= I <= N. Fix:"),
    Try("T42", ("--qb-shard", "x", "--qb-group", "g1"), 4, "--qb-shard x: not I/N with 1 <= I <= N. Fix:"),
    Try("T43", ("--qb-case-budget", "0"), 4, "argument --qb-case-budget: must be a positive number of seconds"),
    Try("T44", ("--qb-case-budget", "-5"), 4, "argument --qb-case-budget: must be a positive number of seconds"),
    Try("T45", ("--qb-isolate", "bogus"), 4, "argument --qb-isolate: invalid choice: 'bogus'"),
    Try("U04", ("--qb-history", f"mysql://u:{SECRET}@127.0.0.1:1/x"), 4, "mysql://u:***@127.0.0.1:1/x"),
]

# tries that need a measured run, a database, a signal or a full disk: pinned by these tests
ELSEWHERE = {
    "T00": "test_bench_e2e.py::test_a_stored_run_leaves_no_scratch_copy_behind",
    "T07": "test_bench_e2e.py::test_a_batch_the_host_cannot_hold_is_an_oom_state",
    "T08": "test_bench_e2e.py::test_a_prompt_longer_than_the_models_positions_is_invalid_input",
    "T23": "test_isolation.py::test_budgets_come_per_device_kind_and_a_bad_file_is_one_line",
    "T24": "test_isolation.py::test_budgets_come_per_device_kind_and_a_bad_file_is_one_line",
    "T31b": "test_bench_e2e.py::test_a_history_that_cannot_be_stored_fails_the_run_and_keeps_its_json",
    "T32ab": "test_history.py::test_concurrent_writers_never_lose_or_corrupt",
    "T35": "test_history.py::test_history_reports_and_removes_the_temp_files_of_killed_writers",
    "T36": "test_bench_e2e.py::test_a_benchmark_json_that_cannot_be_written_is_one_line_and_no_half_file",
    "T36b": "test_bench_e2e.py::test_a_history_that_cannot_be_stored_fails_the_run_and_keeps_its_json",
    "T37": "test_postgres.py::test_unreachable_and_refused_databases_are_one_line_with_the_fix",
    "T38": "test_postgres.py::test_unreachable_and_refused_databases_are_one_line_with_the_fix",
    "T39": "test_postgres.py::test_a_password_in_any_url_scheme_never_leaves_the_url",
    "T40": "test_bench_e2e.py::test_ctrl_c_keeps_the_finished_cases_and_marks_the_run_interrupted",
}
# the model-directory tries as pytest runs (their inspect form is above): the case fails with the line, once
ELSEWHERE_TOO = {"T10": "test_inputs.py::test_a_bad_model_dir_fails_its_case_and_the_run_goes_on",
                 "T15": "test_inputs.py::test_a_checkpoint_that_names_its_own_code_is_said_and_its_code_never_runs",
                 "T17": "test_inputs.py::test_a_safetensors_header_whose_shapes_disagree_with_its_offsets_is_named"}

SWEEP = ({f"T{i:02d}" for i in range(46)} | {"T22a", "T22b", "T29b", "T31b", "T32ab", "T36b"}) - {"T00"}


def test_every_try_of_the_sweep_runs_somewhere():
    """51 tries (T01-T45 and six variants); each is here or in a test that exists."""
    here = {t.id for t in CLI_TRIES + PYTEST_TRIES}
    assert len(SWEEP) == 51 and SWEEP <= here | set(ELSEWHERE), sorted(SWEEP - here - set(ELSEWHERE))
    for where in {**ELSEWHERE, **ELSEWHERE_TOO}.values():
        module, name = where.split("::")
        defined = {node.name for node in ast.walk(ast.parse((Path(__file__).parent / module).read_text()))
                   if isinstance(node, ast.FunctionDef)}
        assert name in defined, where


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_checkpoints):
    """The scratch files the tries point at: model folders, thresholds files, runs, a stored history."""
    import shutil
    scratch = tmp_path_factory.mktemp("sweep")
    md, th, g, hist = (scratch / name for name in ("md", "th", "g", "hist"))
    for folder in (md, th, g, scratch / "h_empty"):
        folder.mkdir()
    dense = tiny_checkpoints["dense"]

    def model(name, edit=None, drop=()):
        shutil.copytree(dense, md / name, ignore=shutil.ignore_patterns("*.pt"))
        config = json.loads((md / name / "config.json").read_text())
        for file in drop:
            (md / name / file).unlink()
        if edit is not None:
            (md / name / "config.json").write_text(edit(config) if callable(edit) else edit)
    model("empty", drop=("config.json",))
    model("pickle", drop=("model.safetensors",))
    (md / "pickle" / "pytorch_model.bin").write_bytes(b"not read")
    model("badjson", "{not json")
    model("unkq", lambda c: json.dumps({**c, "quantization_config": {"quant_method": "hqq"}}))
    model("automap", lambda c: json.dumps({**c, "auto_map": {"AutoModelForCausalLM": "evil.EvilForCausalLM"},
                                           "trust_remote_code": True}))
    model("list", "[]")
    model("trunc")
    weights = (md / "trunc" / "model.safetensors").read_bytes()
    (md / "trunc" / "model.safetensors").write_bytes(weights[:len(weights) // 2])
    model("lie")
    _double_a_shape(md / "lie" / "model.safetensors")
    files = {"typo": "[defaults]\nmax_regresion = 0.05\n", "neg": "[defaults]\nmax_regression = -0.05\n",
             "intpattern": "[[overrides]]\npattern = 5\n", "defaultsmetrics": "[defaults]\nmetrics = 5\n",
             "metrics": "metrics = 5\n", "sloscalar": "[slo]\ncpu = 5\n"}
    for name, text in files.items():
        (th / f"{name}.toml").write_text(text)
    first = history.save_run(hist, {**payload(), "datetime": "2026-11-20T03:00:00"})
    cur = history.save_run(hist, {**payload(), "datetime": "2026-11-21T03:00:00"})
    text = cur.read_text()
    (g / "corrupt.json").write_text(text[:len(text) // 2] + "}}}" + text[len(text) // 2:])
    (g / "empty.json").write_text("")
    (g / "package.json").write_text('{"name": "left-pad", "version": "1.3.0"}')
    (g / "othermachine.json").write_text(json.dumps(payload(gpu="A100", signature="other")))
    (scratch / "afile").write_text("a file\n")
    return {"scratch": scratch, "md": md, "th": th, "g": g, "hist": hist, "cur": cur, "first": first}


def _double_a_shape(path: Path) -> None:
    """T17: one tensor's shape doubled in the header, its offsets and the file's size left as they were."""
    import struct
    data = path.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + size])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [2 * d for d in header[name]["shape"]]
    text = json.dumps(header, separators=(",", ":")).encode().ljust(size)
    assert len(text) == size, "the doubled shape made the header longer than its padding"
    path.write_bytes(data[:8] + text + data[8 + size:])


def _fill(argv, world) -> list[str]:
    return [arg.format(**{k: str(v) for k, v in world.items()}) for arg in argv]


def _promises(out: str, rc: int, expected: Try, scratch: Path) -> list[str]:
    """What every try must hold; the broken promises, empty when all hold."""
    broken = []
    if rc != expected.rc:
        broken.append(f"exit {rc}, documented {expected.rc}")
    if expected.says not in out:
        broken.append(f"does not say {expected.says!r}")
    if "Traceback" in out or re.search(r"^E\s{3}", out, re.MULTILINE):
        broken.append("a traceback")
    if SECRET in out:
        broken.append("the password in its output")
    for file in scratch.rglob("*"):
        if file.is_file() and (file.name.endswith(".tmp") or SECRET.encode() in file.read_bytes()[:1 << 20]):
            broken.append(f"{file}: left behind (a temp file or one holding the password)")
    return broken


@pytest.mark.parametrize("expected", CLI_TRIES, ids=[t.id for t in CLI_TRIES])
def test_a_cli_try_is_one_line_with_its_fix_and_leaves_nothing_behind(expected, world, capsys):
    try:
        rc = cli.main(_fill(expected.argv, world))
    except SystemExit as stop:  # argparse's usage errors
        rc = stop.code
    captured = capsys.readouterr()
    broken = _promises(captured.out + captured.err, rc, expected, world["scratch"])
    errors = [line for line in captured.err.splitlines() if "error" in line]
    if expected.rc == 2 and len(errors) != 1:
        broken.append(f"{len(errors)} error lines, not one")
    assert not broken, f"{expected.id}: {broken}\n{captured.out[-1500:]}{captured.err[-1500:]}"


def test_the_pytest_tries_are_usage_errors_with_their_fix(world):
    """Two pytest processes at a time (configuration errors come before any case: --collect-only)."""
    def run(expected):
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "benchmarks/test_generation.py",
                   "--qb-models", "tiny", "--collect-only", "-q", *_fill(expected.argv, world)]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
        out = done.stdout + done.stderr
        errors = [line for line in out.splitlines()  # argparse's form: "ERROR: usage: ..." then "...: error: ..."
                  if ("ERROR:" in line or ": error:" in line) and not line.startswith("ERROR: usage:")]
        broken = _promises(out, done.returncode, expected, world["scratch"])
        if len(errors) != 1:
            broken.append(f"{len(errors)} error lines, not one")
        return expected.id, broken, out[-1200:]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, PYTEST_TRIES))
    failed = [f"{tid}: {broken}\n{out}" for tid, broken, out in results if broken]
    assert not failed, "\n".join(failed)


# --- the fuzzer: hypothesis over the CLI's options and the TOML files' shapes, the same promises, bounded in time

def _hypothesis():
    return pytest.importorskip("hypothesis", reason="hypothesis is in the ci extra (pip install -e '.[ci]')")


def _toml(value) -> str:
    """A TOML value written inline (every shape TOML has: tables, arrays, scalars); keys always quoted."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)


def _toml_documents(st, keys):
    """Documents whose top-level keys are mostly the file's own (and its fields' names), filled with any shape."""
    scalars = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.booleans(),
                        st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12),
                        st.sampled_from(["*", "cpu", "gpu", "cuda", "higher", "lower", "decode_tokens_per_s"]))
    names = st.one_of(st.sampled_from(keys), st.text("abcdefghij_", min_size=1, max_size=8))
    values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                           st.dictionaries(names, inner, max_size=4)), max_leaves=12)
    return st.dictionaries(names, values, max_size=5).map(
        lambda doc: "\n".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in doc.items()) + "\n")


THRESHOLD_KEYS = ["defaults", "metrics", "overrides", "slo", "alpha", "min_rounds", "max_regression", "direction",
                  "pattern", "metric", "device", "cpu", "gpu", "ttft_ms", "tpot_ms", "decode_tokens_per_s"]
BUDGET_KEYS = ["cpu", "gpu", "cuda", "case_s", "engine_start_s", "server_start_s"]


def test_fuzzed_thresholds_and_budgets_files_load_or_are_one_line(tmp_path):
    """Any document: it loads and every lookup the gate makes works, or it is a QuantbenchError naming the file
    with the fix. Nothing else may escape (T21/T22 loaded and then crashed the gate)."""
    hypothesis = _hypothesis()
    from hypothesis import strategies as st

    from quantbench.bench.budgets import parse_budgets
    from quantbench.errors import QuantbenchError
    from quantbench.gate.thresholds import parse_thresholds
    tried = []

    @hypothesis.settings(max_examples=400, deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(_toml_documents(st, THRESHOLD_KEYS), _toml_documents(st, BUDGET_KEYS))
    def check(thresholds_text, budgets_text):
        tried.append(1)
        try:
            loaded = parse_thresholds(thresholds_text, "th.toml")
        except QuantbenchError as exc:
            assert exc.line().startswith("th.toml: invalid thresholds file") and "Fix:" in exc.line()
        else:
            for device in ("cpu", "gpu", None):
                for metric in [*loaded.metrics, "decode_tokens_per_s", "ttft_s"]:
                    loaded.for_case("test_generation[tiny-bf16-transformers-b1-p16-decode]", metric, device)
        for kind in ("cpu", "cuda"):
            try:
                parse_budgets(budgets_text, kind, "budgets.toml")
            except QuantbenchError as exc:
                assert exc.line().startswith("budgets.toml") and "Fix:" in exc.line()
    check()
    print(f"fuzzed {len(tried)} thresholds + budgets documents")


CLI_WORDS = ["gate", "report", "history", "inspect", "--current", "--baseline", "--history", "--thresholds", "--out",
             "--group", "--fail-on", "--baseline-runs", "--confirm-rerun", "--if-no-baseline", "--add", "latest",
             "previous", "pass", "regressed", "0", "-1", "3", "nan", "{cur}", "{first}", "{hist}", "{md}/lie",
             "{md}/list", "{g}/corrupt.json", "{g}/package.json", "{th}/metrics.toml", "{scratch}/out",
             f"postgresql+psycopg://u:{SECRET}@127.0.0.1:1/x", f"https://u:{SECRET}@example.invalid/x", ""]


def test_fuzzed_cli_command_lines_end_in_an_exit_code_never_a_traceback(world, capsys, monkeypatch):
    """Command lines of the CLI's own words, values and the sweep's bad files, in any order: an exit code of 0, 1
    or 2 and no traceback, no password in the output or a file, no temp file left."""
    hypothesis = _hypothesis()
    from hypothesis import strategies as st
    monkeypatch.chdir(world["scratch"])  # a relative --out lands in the scratch folder, never in the repository
    tried = []

    @hypothesis.settings(max_examples=300, deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(st.sampled_from(["gate", "report", "history", "inspect"]),
                      st.lists(st.sampled_from(CLI_WORDS), max_size=7))
    def check(command, words):
        tried.append(1)
        argv = [command, *_fill(words, world)]
        try:
            rc = cli.main(argv)
        except SystemExit as stop:
            rc = stop.code
        captured = capsys.readouterr()
        out = captured.out + captured.err
        assert rc in (0, 1, 2), (argv, rc, out[-800:])
        assert "Traceback" not in out and SECRET not in out, (argv, out[-800:])
    check()
    leftovers = [f for f in world["scratch"].rglob("*") if f.is_file() and (f.name.endswith(".tmp") or
                                                                            SECRET.encode() in f.read_bytes())]
    assert not leftovers, leftovers
    print(f"fuzzed {len(tried)} command lines")
