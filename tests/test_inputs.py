"""Bad inputs give one clear line naming the file and the fix."""

import json
import shutil

import pytest

from quantbench.errors import BadCheckpoint, QuantbenchError
from quantbench.formats import parse_formats
from quantbench.formats.checkpoints import detect_checkpoint

from .conftest import run_cli, run_pytest


@pytest.fixture
def awq_copy(tiny_checkpoints, tmp_path):
    return shutil.copytree(tiny_checkpoints["awq-gemm"], tmp_path / "awq")


def _edit_config(path, fn):
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


def test_detects_every_kind(tiny_checkpoints):
    for kind, path in tiny_checkpoints.items():
        assert detect_checkpoint(path).kind == kind


def test_missing_config(awq_copy):
    (awq_copy / "config.json").unlink()
    with pytest.raises(BadCheckpoint, match=r"awq/config\.json: missing config\.json\. Fix: pass a transformers"):
        detect_checkpoint(awq_copy)


def test_unknown_quant_method(awq_copy):
    _edit_config(awq_copy, lambda c: c["quantization_config"].update(quant_method="exl9"))
    with pytest.raises(BadCheckpoint, match=r"config\.json: unknown quant_method 'exl9'\. Fix: quantbench detects"):
        detect_checkpoint(awq_copy)


def test_truncated_safetensors(awq_copy):
    shard = next(awq_copy.glob("*.safetensors"))
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadCheckpoint, match=r"model\.safetensors: truncated safetensors file .* Fix: re-copy"):
        detect_checkpoint(awq_copy)


def test_a_safetensors_header_whose_shapes_disagree_with_its_offsets_is_named(awq_copy):
    """T17: shapes doubled, offsets and size consistent: 326 lines of traceback from inside transformers."""
    import struct
    shard = next(awq_copy.glob("*.safetensors"))
    data = shard.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + length])
    name = next(k for k, v in header.items() if k != "__metadata__" and len(v["shape"]) == 2)
    header[name]["shape"] = [2 * d for d in header[name]["shape"]]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    shard.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length:])
    with pytest.raises(BadCheckpoint, match=rf"model\.safetensors: tensor '{name}': shape .* needs \d+ bytes, its "
                                            r"offsets hold \d+\. Fix: re-save the checkpoint"):
        detect_checkpoint(awq_copy)


@pytest.mark.parametrize("config, words", [([], "config.json holds a JSON list, not an object"),
                                           ({"quantization_config": "awq"}, "quantization_config is a str")])
def test_a_config_json_of_the_wrong_shape_is_one_line_naming_it(awq_copy, config, words):
    """T18: a config.json holding [] said "'list' object has no attribute 'get'"."""
    (awq_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(BadCheckpoint) as err:
        detect_checkpoint(awq_copy)
    assert err.value.line().startswith(str(awq_copy / "config.json")) and words in err.value.line()


def test_a_format_with_an_unknown_runtime_suffix_blames_the_runtime():
    """T03: bf16@nosuch said "unknown format 'bf16@nosuch'" and listed no runtime."""
    from quantbench.bench.selection import parse_pairs
    with pytest.raises(QuantbenchError) as err:
        parse_pairs("bf16@nosuch")
    line = err.value.line()
    assert "unknown runtime suffix '@nosuch' (the format 'bf16' is known)" in line and "@vllm" in line, line


def test_unsupported_group_size(awq_copy):
    _edit_config(awq_copy, lambda c: c["quantization_config"].update(group_size=96))
    with pytest.raises(BadCheckpoint, match=r"unsupported AWQ group_size 96\. Fix: AutoAWQ kernels take group_size"):
        detect_checkpoint(awq_copy)


def test_unknown_format_name():
    with pytest.raises(QuantbenchError, match=r"unknown format 'awq-gemx'\. Fix: use one of: bf16, fp16"):
        parse_formats("bf16,awq-gemx")


def test_cli_prints_one_line_and_exits_2(awq_copy):
    (awq_copy / "config.json").unlink()
    result = run_cli("inspect", str(awq_copy))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "missing config.json" in result.stderr


@pytest.mark.parametrize("option,value,message", [
    ("--qb-formats", "nope", "unknown format 'nope'. Fix: use one of:"),
    ("--qb-models", "nosuch", "nosuch.toml: no such model spec. Fix: use one of"),
    ("--qb-kernel-models", "nosuch", "nosuch.toml: no such model spec. Fix: use one of"),
    ("--qb-kernels", "nope", "unknown kernel(s) ['nope']. Fix: use one of:"),
    ("--qb-m", "0", "--qb-m must be positive integers, got '0'"),
    # 0 used to fall back to the default silently (`or default`)
    ("--qb-new-tokens", "0", "argument --qb-new-tokens: must be a positive integer, got '0'"),
    ("--qb-rounds", "-1", "argument --qb-rounds: must be a positive integer, got '-1'"),
    # found before the run, not when it is stored at the end
    ("--qb-history", "/proc/quantbench-history", "--qb-history /proc/quantbench-history: cannot create it"),
    # a misspelt state matches no decision: that gate could never fail
    ("--qb-gate-fail-on", "regresed", "--qb-gate-fail-on 'regresed': unknown gate state(s) 'regresed'. Fix: use"),
])
def test_a_bad_option_on_the_bench_command_line_is_one_usage_error_line(option, value, message):
    result = run_pytest("benchmarks/test_generation.py", "benchmarks/test_kernels.py", f"{option}={value}",
                        "--collect-only", "-q")
    assert result.returncode == 4, result.stdout[-2000:]
    assert message in result.stderr and "Traceback" not in result.stdout + result.stderr, result.stdout[-2000:]


def test_a_bad_model_dir_fails_its_case_and_the_run_goes_on(awq_copy, tmp_path):
    _edit_config(awq_copy, lambda c: c["quantization_config"].update(group_size=96))
    result = run_pytest("benchmarks/test_generation.py", "--qb-models", "tiny", "--model-dir", str(awq_copy),
                        "--qb-formats", "bf16", "--qb-batch", "1", "--qb-prompt", "8", "--qb-new-tokens", "2",
                        "--qb-rounds", "1", "--benchmark-disable", "-q")
    assert "unsupported AWQ group_size 96" in result.stdout
    assert "1 failed, 2 passed" in result.stdout, result.stdout[-2000:]
    assert "During handling of the above exception" not in result.stdout, result.stdout[-2000:]  # T10-T16: twice


def test_the_hub_libraries_run_offline_so_a_hub_id_fails_at_once(tmp_path):
    import time

    import huggingface_hub.constants as hub
    from transformers import AutoConfig

    # The plugin set offline mode before anything imported the Hub libraries (they read it at import).
    assert hub.HF_HUB_OFFLINE, "HF_HUB_OFFLINE was not in force when huggingface_hub was imported"
    start = time.perf_counter()
    with pytest.raises(OSError) as raised:
        AutoConfig.from_pretrained("Qwen/Qwen2.5-3B", cache_dir=tmp_path)  # a hub id, never fetched
    assert time.perf_counter() - start < 10
    assert "offline" in str(raised.value).lower() or "couldn't connect" in str(raised.value).lower(), raised.value


def test_a_checkpoint_that_names_its_own_code_is_said_and_its_code_never_runs(tiny_checkpoints, tmp_path):
    """T15: a config.json with auto_map to the checkpoint's own modeling file and trust_remote_code: true was timed
    as stock Llama without a word (safe: the file never ran). Now the run says so at its start and keeps the note."""
    user_dir = tmp_path / "automap"
    shutil.copytree(tiny_checkpoints["dense"], user_dir)
    marker = tmp_path / "evil-ran"
    (user_dir / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    _edit_config(user_dir, lambda c: c.update(auto_map={"AutoModelForCausalLM": "evil.EvilForCausalLM"},
                                              trust_remote_code=True))
    inspected = run_cli("inspect", str(user_dir))
    assert inspected.returncode == 0 and "auto_map names the checkpoint's own code (evil.EvilForCausalLM)" in \
        inspected.stderr, inspected.stderr
    out = tmp_path / "bench.json"
    result = run_pytest("benchmarks/test_generation.py", "--model-dir", str(user_dir), "--qb-formats", "bf16",
                        "--qb-batch", "1", "--qb-prompt", "8", "--qb-new-tokens", "2", "--qb-rounds", "1", "-k",
                        "decode", f"--benchmark-json={out}", "-q")
    assert result.returncode == 0, result.stdout[-2000:]
    assert "NOTE: " in result.stdout and "times transformers' stock LlamaForCausalLM instead. Fix:" in result.stdout
    assert "evil.EvilForCausalLM" in json.loads(out.read_text())["quantbench"]["notes"][0]
    assert not marker.exists()  # the checkpoint's code never ran
