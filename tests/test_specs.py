import pytest

from quantbench.errors import QuantbenchError
from quantbench.specs import available_specs, load_spec


def test_required_specs_exist():
    assert {"tiny", "tinyllama-1.1b", "qwen2.5-3b", "mistral-7b"} <= set(available_specs())


@pytest.mark.parametrize("name,params_b", [("tinyllama-1.1b", 1.10), ("qwen2.5-3b", 3.09), ("mistral-7b", 7.24)])
def test_parameter_counts_match_the_real_models(name, params_b):
    assert load_spec(name).parameter_count() / 1e9 == pytest.approx(params_b, abs=0.01)


def test_linear_shapes_are_k_n_of_each_projection():
    shapes = load_spec("mistral-7b").linear_shapes()
    assert shapes["k_proj"] == (4096, 1024)
    assert shapes["down_proj"] == (14336, 4096)


def test_every_spec_is_int4_group128_compatible():
    for name in available_specs():
        for k, n in load_spec(name).linear_shapes().values():
            assert k % 128 == 0 and n % 8 == 0, (name, k, n)


def test_hf_config_round_trip():
    config = load_spec("qwen2.5-3b").to_hf_config()
    assert config.model_type == "qwen2" and config.num_key_value_heads == 2 and config.tie_word_embeddings


def test_unknown_spec_names_the_file_and_choices(tmp_path):
    with pytest.raises(QuantbenchError, match=r"nope\.toml: no such model spec\. Fix: use one of .*tiny"):
        load_spec("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\narchitecture = "gpt2"\n')
    with pytest.raises(QuantbenchError, match=r"bad\.toml: invalid model spec"):
        load_spec(str(bad))
