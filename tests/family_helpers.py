"""Shared by the per-family tests (GPTQ, bitsandbytes, torchao): a checkpoint folder with a given
quantization_config for detection, and a user checkpoint made by a tools/ script, inspected and benchmarked."""

import json
import subprocess
import sys

from .conftest import REPO, run_cli, run_pytest

SMALL = ["--qb-batch", "1", "--qb-prompt", "16", "--qb-new-tokens", "4", "--qb-rounds", "2"]


def checkpoint_with(tmp_path, quantization_config: dict):
    """A folder detect_checkpoint accepts (config.json, one valid safetensors file) with this config."""
    import torch
    from safetensors.torch import save_file
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama",
                                                      "quantization_config": quantization_config}))
    save_file({"lm_head.weight": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"))
    return tmp_path


def make_user_checkpoint(tool: str, out) -> None:
    """Run tools/<tool> (the library's own API, no quantbench code) into ``out``."""
    made = subprocess.run([sys.executable, str(REPO / "tools" / tool), str(out)], cwd=out.parent,
                          capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-3000:]


def inspect_and_bench(user_dir, tmp_path, *extra: str) -> tuple[dict, dict]:
    """`quantbench inspect` of a user checkpoint, and a small benchmark run of it by --model-dir."""
    inspected = run_cli("inspect", str(user_dir))
    assert inspected.returncode == 0, inspected.stderr
    out = tmp_path / "user.json"
    result = run_pytest("benchmarks/test_generation.py", "--model-dir", str(user_dir), *SMALL, *extra,
                        f"--benchmark-json={out}", "-q")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return json.loads(inspected.stdout), json.loads(out.read_text())
