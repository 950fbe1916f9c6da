import pytest

from quantbench.bench.cases import build_cases, parse_int_list
from quantbench.bench.pool import ModelSource


def test_cases_nest_so_one_model_serves_a_run():
    src = ModelSource.from_spec("tiny")
    pairs = [("bf16", "transformers"), ("awq-gemm", "transformers")]
    cases = build_cases([src], lambda s: None, pairs, [1, 4], [32], 8)
    assert [c.id for c in cases][:4] == [
        "tiny-bf16-transformers-b1-p32-prefill", "tiny-bf16-transformers-b1-p32-decode",
        "tiny-bf16-transformers-b4-p32-prefill", "tiny-bf16-transformers-b4-p32-decode"]
    assert [c.format for c in cases] == ["bf16"] * 4 + ["awq-gemm"] * 4


def test_a_broken_source_becomes_one_failing_case_and_the_rest_run():
    good, bad = ModelSource.from_spec("tiny"), ModelSource.from_dir("/nonexistent/ckpt")

    def formats_for(source):
        if source is bad:
            raise RuntimeError("/nonexistent/ckpt: not a directory")
    cases = build_cases([bad, good], formats_for, [("bf16", "transformers")], [1], [8], 4)
    assert cases[0].error == "/nonexistent/ckpt: not a directory" and cases[0].id == "dir:ckpt-invalid"
    assert len(cases) == 3


def test_detected_formats_filter_the_matrix():
    src = ModelSource.from_spec("tiny")
    cases = build_cases([src], lambda s: ("ct-w4a16", "ct-w4a16-dequant"),
                        [("bf16", "transformers"), ("ct-w4a16", "transformers")], [1], [8], 4)
    assert {c.format for c in cases} == {"ct-w4a16"}


@pytest.mark.parametrize("text", ["", "a,b", "0", "-1"])
def test_parse_int_list_rejects(text):
    with pytest.raises(ValueError):
        parse_int_list(text, "--qb-batch")
