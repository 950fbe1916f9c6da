import json
from dataclasses import asdict

import pytest

from quantbench.errors import QuantbenchError
from quantbench.formats import checkpoints as models
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
    with pytest.raises(QuantbenchError, match=r"bad\.toml: invalid model spec \(missing key\(s\) 'hidden_size'"):
        load_spec(str(bad))


@pytest.mark.parametrize("edit,message", [
    # each used to surface as a Python or torch error (negative tensor dimension) during the build
    ({"hidden_size": -256}, "hidden_size must be a positive integer, got -256"),
    ({"vocab_size": "1024"}, "vocab_size must be a positive integer, got '1024'"),
    ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive integer, got 0"),
    ({"tie_word_embeddings": "no"}, "tie_word_embeddings must be true or false, got 'no'"),
    ({"hiden_size": 256}, "unknown key(s) 'hiden_size'"),
])
def test_a_bad_spec_field_is_named(tmp_path, edit, message):
    data = {**asdict(load_spec("tiny")), **edit}
    bad = tmp_path / "bad.toml"
    bad.write_text("\n".join(f"{key} = {json.dumps(value)}" for key, value in data.items()) + "\n")
    with pytest.raises(QuantbenchError) as info:
        load_spec(str(bad))
    assert info.value.line().startswith(f"{bad}: invalid model spec (") and message in info.value.line()


# ----------------------------------------------------------------------------- fixture cache builds
def _finished(path, facts):
    path.mkdir(parents=True)
    (path / "model.safetensors").write_text(facts["who"])
    (path / ".complete").write_text(json.dumps(facts))


def test_a_build_finished_meanwhile_by_another_process_is_kept(tmp_path):
    """Two side-by-side benchmark runs may build the same checkpoint at once: the later one must not
    delete the copy the other is already reading."""
    final = tmp_path / "tiny" / "ct-w4a16-abc"

    def ours(tmp):
        _finished(final, {"who": "other"})  # the other process renames its build in while ours runs
        (tmp / "model.safetensors").write_text("ours")
        return {"who": "ours"}

    assert models._build_into(final, ours) == {"who": "other"}
    assert (final / "model.safetensors").read_text() == "other"
    # our temp folder is gone (the build's lock file stays: removing it would race with a process about to take it)
    assert [p.name for p in final.parent.iterdir() if p.suffix != ".lock"] == [final.name]


def test_force_rebuilds_and_an_incomplete_leftover_is_replaced(tmp_path):
    final = tmp_path / "tiny" / "bf16-abc"
    _finished(final, {"who": "old"})

    def build(tmp):
        (tmp / "model.safetensors").write_text("new")
        return {"who": "new"}

    assert models._build_into(final, build, force=True) == {"who": "new"}
    assert (final / "model.safetensors").read_text() == "new"
    (final / ".complete").unlink()  # a crash of an old version left a folder without its marker
    assert models._build_into(final, build) == {"who": "new"} and models.is_built(final)
