"""The +compile runtime: names, what the compiler did (graphs, breaks), the eager check, end to end."""

import json

import pandas as pd
import pytest
import torch

from quantbench.bench.cases import build_cases
from quantbench.bench.pool import ModelPool, ModelSource
from quantbench.bench.prompts import prompt_ids
from quantbench.bench.selection import parse_pairs
from quantbench.errors import QuantbenchError, Unsupported
from quantbench.formats import get_format
from quantbench.report import findings
from quantbench.runtimes import RUNTIMES, compiled, get_runtime, split_format_suffix
from quantbench.runtimes.eager import decode_n_tokens, prefill

from .conftest import run_cli, run_pytest

# In an xdist worker that had run other test files first, the compiled step at a second batch size read cosine 0.24
# against eager (twice, cause not found); in a pytest process of its own it passes: nox -s tests runs it there.
pytestmark = pytest.mark.alone


def test_old_variant_names_select_the_compiled_runtime_for_the_base_format():
    runtime = get_runtime("transformers+compile")
    assert parse_pairs("awq-gemm+compile") == [("awq-gemm", "transformers+compile")]  # the base format's checkpoint
    assert split_format_suffix("awq-gemm+compile") == ("awq-gemm", runtime.name)
    assert split_format_suffix("bf16")[1] is None
    assert parse_pairs("bf16,bf16+compile") == [("bf16", "transformers"), ("bf16", "transformers+compile")]
    assert all(r == "transformers" for _, r in parse_pairs("all"))  # opt-in: compiling costs minutes
    assert parse_pairs("all,bf16+compile,bf16")[-1] == ("bf16", "transformers+compile")
    assert parse_pairs("all,bf16").count(("bf16", "transformers")) == 1
    with pytest.raises(QuantbenchError, match=r"\+compile appended"):
        parse_pairs("nope+compile")
    assert "prefill runs eager" in runtime.unsupported_phase(get_format("bf16"), "prefill")
    assert runtime.unsupported_phase(get_format("bf16"), "decode") is None
    assert "own KV cache" in runtime.unsupported_reason(get_format("awq-gemm-fused"), torch.device("cpu"))


def test_formats_and_runtimes_are_chosen_independently():
    assert parse_pairs("ct-w4a16,awq-gemm", "transformers,transformers+compile") == [
        ("ct-w4a16", "transformers"), ("ct-w4a16", "transformers+compile"),
        ("awq-gemm", "transformers"), ("awq-gemm", "transformers+compile")]
    from quantbench.bench.selection import runtime_axis
    from quantbench.servers import SERVERS
    # 'all' is every runtime, then every server; a server is on the axis but is no runtime (it cannot be opened)
    assert parse_pairs("bf16", "all") == [("bf16", name) for name in [*RUNTIMES, *SERVERS]] == \
        [("bf16", name) for name in runtime_axis()]
    assert "vllm-serve" in SERVERS and "vllm-serve" not in RUNTIMES
    assert parse_pairs("bf16@vllm-serve,bf16@vllm+eager") == [("bf16", "vllm-serve"), ("bf16", "vllm+eager")]
    with pytest.raises(QuantbenchError, match="unknown runtime 'nope'"):
        parse_pairs("bf16", "nope")


def test_a_user_directory_runs_the_variants_of_the_formats_it_holds():
    class Dense:
        label = "dir:dense"
    cases = build_cases([Dense()], lambda source: ("bf16", "fp16"), parse_pairs("bf16+compile,awq-gemm+compile"),
                        [1], [8], 4)
    assert {(c.format, c.runtime) for c in cases} == {("bf16", "transformers+compile")}


def test_compile_report_counts_this_compilation_only():
    before = {"graphs": 3, "breaks": {"Data pointer comparison\n  Explanation: ...": 2}, "cudagraph_skips": 1}
    after = {"graphs": 14, "breaks": {"Data pointer comparison\n  Explanation: ...": 40, "ContextVar.get": 1},
             "cudagraph_skips": 1}
    report = compiled.compile_report(before, after)
    assert report == {"compile_graphs": 11, "compile_graph_breaks": 39,
                      "compile_break_reason": "Data pointer comparison", "cudagraph_skips": 0}
    assert compiled.compile_report(after, after)["compile_break_reason"] is None


def test_break_location_names_the_library_file_and_line():
    message = ("Graph break (user stack suppressed due to duplicate graph break) in user code at "
               "/venv/lib/python3.11/site-packages/compressed_tensors/utils/helpers.py:362\nGraph Break Reason: ...")
    assert compiled.break_location(message) == "compressed_tensors/utils/helpers.py:362"
    assert compiled.break_location("Graph break in user code at /repo/src/quantbench/compiled.py:82") \
        == "quantbench/compiled.py:82"
    assert compiled.break_location("Graph Break Reason: no location") is None


def test_a_skipped_cuda_graph_is_recorded_and_flagged():
    from torch._inductor.cudagraph_utils import log_cudagraph_skip_and_bump_counter
    before = compiled._counters()
    with compiled._compiler_log() as log:  # inductor's own skip path, as it runs on a GPU
        log_cudagraph_skip_and_bump_counter("skipping cudagraphs due to mutated inputs (2 instances). Found from :\n x")
    assert compiled.compile_report(before, compiled._counters())["cudagraph_skips"] == 1
    assert log.facts()["cudagraph_skip_reason"] == ("skipping cudagraphs due to mutated inputs (2 instances). "
                                                    "Found from :")
    rows = pd.DataFrame([{"model": "m", "format": "bf16+compile", "phase": "decode", "batch": 1, "prompt_len": 8,
                          "decode_tokens_per_s": 90.0, "compile_graphs": 1, "compile_graph_breaks": 0,
                          "compile_s": 30.0,
                          "cudagraph_skips": 1, **log.facts()},
                         {"model": "m", "format": "bf16", "phase": "decode", "batch": 1, "prompt_len": 8,
                          "decode_tokens_per_s": 100.0}])
    assert findings.compile_flags(rows) == [
        "COMPILE SLOWER: m: bf16+compile compiled into one graph yet; decode 0.90x of bf16 eager",
        "CUDA GRAPHS SKIPPED: m: bf16+compile: inductor skipped CUDA graphs for 1 graph(s) (skipping cudagraphs due "
        "to mutated inputs (2 instances). Found from :); decode 0.90x of bf16 eager"]


@pytest.fixture(scope="module")
def pool(tiny_checkpoints):
    pool = ModelPool(torch.device("cpu"))
    yield pool
    pool.release()


def _fresh(pool, name, runtime="transformers+compile"):
    pool.release()  # each test gets its own model instance (some patch it)
    return pool.get(ModelSource.from_spec("tiny"), name, runtime)


@pytest.mark.slow
def test_compiled_decode_is_one_graph_and_agrees_with_eager(pool):
    prepared = _fresh(pool, "bf16")
    model, decoder = prepared.loaded.model, prepared.decoder
    ids = prompt_ids(2, 16, 256, "cpu")
    facts = decoder.prepare(ids, 8)
    assert facts["compile_graphs"] == 1 and facts["compile_graph_breaks"] == 0, facts
    assert facts["compile_cosine"] >= compiled.COMPILE_MIN_COSINE and facts["compile_s"] > 0
    assert decoder.prepare(ids, 8) is facts  # compiled once per shape
    tokens = decoder.decode(decoder.start(ids, 8), 8)
    cache, token = prefill(model, ids)
    eager = decode_n_tokens(model, cache, token, 8)
    assert tokens.shape == eager.shape == (2, 8)
    assert torch.equal(tokens[:, 0], eager[:, 0])  # later tokens may part on a near-tie; the cosine check is exact


@pytest.mark.slow
def test_the_compiled_decoder_holds_one_static_cache_at_a_time(pool):
    """3ae1c25 kept a StaticCache for every (batch, length) it had seen, for the model's whole life (~48 GiB of
    KV over the nightly matrix for mistral-7b): out-of-memory states of the harness, recorded as the format's."""
    decoder = _fresh(pool, "bf16").decoder
    small, wide = prompt_ids(1, 16, 256, "cpu"), prompt_ids(2, 16, 256, "cpu")
    decoder.prepare(small, 4)
    decoder.prepare(wide, 4)
    assert list(decoder.caches) == [(2, 20)]
    decoder.prepare(small, 4)  # the earlier shape again: compiled already, a new cache
    assert list(decoder.caches) == [(1, 20)]
    first = decoder.decode(decoder.start(small, 4), 4)
    assert first.shape == (1, 4)
    again = decoder.decode(decoder.start(small, 4), 4)
    assert torch.equal(first, again)
    pool.release()  # its graphs go with it: the next test compiles these shapes afresh


@pytest.mark.slow
def test_releasing_a_compiled_model_drops_its_graphs(tiny_checkpoints):
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    step_code = compiled.CompiledDecoder._step.__code__  # where dynamo keeps every decoder's compiled steps
    pool = ModelPool(torch.device("cpu"))
    prepared = pool.get(ModelSource.from_spec("tiny"), "bf16", "transformers+compile")
    prepared.decoder.prepare(prompt_ids(1, 16, 256, "cpu"), 4)
    assert len(_debug_get_cache_entry_list(step_code)) >= 1
    pool.release()
    assert _debug_get_cache_entry_list(step_code) == []  # they would pile up over a run's models


@pytest.mark.slow
def test_a_graph_break_is_counted_not_hidden(pool):
    prepared = _fresh(pool, "bf16")
    layer = prepared.loaded.model.model.layers[0]
    original = layer.forward

    def forward_with_a_break(*args, **kwargs):
        torch._dynamo.graph_break()  # what a Python-side hook in a library does to the compiled step
        return original(*args, **kwargs)

    layer.forward = forward_with_a_break
    facts = prepared.decoder.prepare(prompt_ids(1, 16, 256, "cpu"), 4)
    assert facts["compile_graphs"] >= 2 and facts["compile_graph_breaks"] >= 1, facts
    assert facts["compile_break_reason"] and "test_compiled.py:" in facts["compile_break_at"], facts
    rows = pd.DataFrame([
        {"model": "tiny", "format": "bf16+compile", "phase": "decode", "batch": 1, "prompt_len": 16,
         "decode_tokens_per_s": 50.0, **facts},
        {"model": "tiny", "format": "bf16", "phase": "decode", "batch": 1, "prompt_len": 16,
         "decode_tokens_per_s": 100.0}])
    assert findings.compile_table(rows).iloc[0]["vs_eager_max"] == 0.5
    assert findings.compile_flags(rows.iloc[:0]) == []
    flag = findings.compile_flags(rows)
    assert len(flag) == 1 and flag[0].startswith("GRAPH BREAKS: tiny: bf16+compile")
    assert "0.50x of bf16 eager" in flag[0]
    assert f"at {facts['compile_break_at']})" in flag[0]


@pytest.mark.slow
def test_a_wrong_or_failing_compiled_step_is_never_timed(pool):
    prepared = _fresh(pool, "bf16")
    decoder, vocab = prepared.decoder, prepared.loaded.model.config.vocab_size
    ids = prompt_ids(1, 16, vocab, "cpu")
    decoder.step = lambda token, cache, position: (token, torch.randn(1, vocab))  # a miscompiled step
    with pytest.raises(compiled.CompileMismatch, match="disagrees with eager"):
        decoder.prepare(ids, 4)

    def broken(token, cache, position):
        raise RuntimeError("backend exploded\nsecond line")
    decoder.step = broken
    with pytest.raises(Unsupported, match="torch.compile failed on this model: RuntimeError: backend exploded$"):
        decoder.prepare(ids, 4)


def test_speedups_compare_within_one_runtime():
    rows = pd.DataFrame([{"model": "m", "prompt_len": 8, "phase": "decode", "batch": 1, "format": f,
                          "bits": None if f.startswith("bf16") else 4,
                          "decode_tokens_per_s": v, "weight_bytes_after_load": 1, "weight_bytes_after_first_forward": 1}
                         for f, v in [("bf16", 100), ("awq-gemm", 50), ("bf16+compile", 400), ("awq-gemm+compile", 600),
                                      ("ct-w4a16+compile", 200)]])
    speed = findings.speedup_table(rows, "m", 8)
    assert speed.loc["awq-gemm", 1] == 0.5 and speed.loc["awq-gemm+compile", 1] == 1.5
    assert speed.loc["ct-w4a16+compile", 1] == 0.5 and speed.loc["bf16+compile", 1] == 1.0
    flags = findings.flags(rows.assign(state="ok"))
    assert any("ct-w4a16+compile decodes 2.00x slower than bf16+compile" in f for f in flags)


@pytest.mark.slow
def test_compiled_format_end_to_end_with_its_guide_section(tiny_checkpoints, tmp_path):
    out = tmp_path / "bench.json"
    result = run_pytest("benchmarks/test_generation.py", "--qb-models", "tiny", "--qb-formats", "bf16,bf16+compile",
                        "--qb-batch", "1", "--qb-prompt", "16", "--qb-new-tokens", "4", "--qb-rounds", "2",
                        f"--benchmark-json={out}", "-q")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    payload = json.loads(out.read_text())
    compiled_case = [b for b in payload["benchmarks"] if b["extra_info"]["runtime"] == "transformers+compile"]
    assert len(compiled_case) == 1 and compiled_case[0]["extra_info"]["format"] == "bf16"
    assert compiled_case[0]["name"] == "test_generation[tiny-bf16-transformers+compile-b1-p16-decode]"
    info = compiled_case[0]["extra_info"]
    assert info["decode_runtime"].startswith("torch.compile(mode=default)") and info["compile_graphs"] == 1
    assert info["decode_tokens_per_s"] > 0 and info["guard"]["passed"]
    eager = [b for b in payload["benchmarks"] if b["extra_info"]["runtime"] == "transformers"
             and b["extra_info"]["phase"] == "decode"]
    assert eager[0]["extra_info"]["decode_runtime"] == "eager"
    stated = [s for s in payload["quantbench"]["states"] if s["runtime"] == "transformers+compile"]
    assert [s["phase"] for s in stated] == ["prefill"] and "prefill runs eager" in stated[0]["reason"]
    report = run_cli("report", "--history", str(tmp_path / "h"), "--out", str(tmp_path / "out"), str(out))
    assert report.returncode == 0, report.stderr
    guide = next((tmp_path / "out").glob("*/README.md")).read_text()
    assert "## torch.compile" in guide and "| tiny    | bf16+compile |" in guide
