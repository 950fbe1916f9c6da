"""Device ceilings for the roofline: datasheet numbers for known GPUs, and measured ones.

Datasheet figures are dense (no sparsity) tensor-core TFLOP/s for 16-bit inputs and HBM/GDDR
bandwidth; measured figures come from ``quantbench peaks`` (a large device-to-device copy and a
large matmul) and are stored in the history folder of the machine signature.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

# name fragment (as torch reports it) -> (memory GB/s, dense bf16/fp16 TFLOP/s, source)
DATASHEET = {
    "H200": (4800, 989, "NVIDIA H200 SXM datasheet"),
    "H100 PCIe": (2000, 756, "NVIDIA H100 PCIe datasheet"),
    "H100 NVL": (3900, 835, "NVIDIA H100 NVL datasheet"),
    "H100": (3350, 989, "NVIDIA H100 SXM datasheet"),
    "A100-SXM4-80GB": (2039, 312, "NVIDIA A100 80GB SXM datasheet"),
    "A100-PCIE-80GB": (1935, 312, "NVIDIA A100 80GB PCIe datasheet"),
    "A100": (1555, 312, "NVIDIA A100 40GB datasheet"),
    "L40S": (864, 362, "NVIDIA L40S datasheet"),
    "RTX 4090": (1008, 165, "NVIDIA RTX 4090 (Ada) whitepaper, fp16 tensor with fp32 accumulate"),
    "A10": (600, 125, "NVIDIA A10 datasheet"),
}


def datasheet_peaks(device_name: str | None) -> dict | None:
    """Most specific table entry whose key occurs in the device name (H100 PCIe before H100)."""
    if not device_name:
        return None
    for key in sorted(DATASHEET, key=len, reverse=True):
        if key.lower() in device_name.lower():
            gbps, tflops, source = DATASHEET[key]
            return {"memory_gbps": gbps, "tflops": {"bfloat16": tflops, "float16": tflops}, "source": source}
    return None


def _time(fn, device, repeats: int) -> float:
    import torch
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def measure_peaks(device, copy_mib: int | None = None, matmul_n: int | None = None, repeats: int = 3) -> dict:
    """Measured ceilings: copy bandwidth (read + write) and large-matmul TFLOP/s per 16-bit dtype.
    The best of ``repeats`` is kept: a ceiling is what the device can do, not what it usually does."""
    import torch
    device = torch.device(device)
    cuda = device.type == "cuda"
    copy_mib = copy_mib or (2048 if cuda else 512)
    matmul_n = matmul_n or (8192 if cuda else 1024)  # CPU fp16 matmul has no fast kernel: keep it small
    src = torch.empty(copy_mib * 2**20, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    seconds = _time(lambda: dst.copy_(src), device, repeats)
    gbps = 2 * src.numel() / seconds / 1e9
    del src, dst
    tflops = {}
    for dtype in (torch.bfloat16, torch.float16):
        a = torch.randn(matmul_n, matmul_n, device=device, dtype=dtype)
        b = torch.randn(matmul_n, matmul_n, device=device, dtype=dtype)
        # F.linear (x @ W^T) is the op the kernels run; on CPU fp16 a plain a @ b takes a far slower path.
        seconds = _time(lambda: torch.nn.functional.linear(a, b), device, repeats)
        tflops[str(dtype).replace("torch.", "")] = 2 * matmul_n**3 / seconds / 1e12
    return {"memory_gbps": gbps, "tflops": tflops, "source": f"measured: {copy_mib} MiB copy, "
            f"{matmul_n}^3 matmul, best of {repeats}", "threads": torch.get_num_threads() if not cuda else None}


PEAKS_FILE = "peaks.json"


def save_measured(history_root: Path, signature: str, peaks: dict) -> Path:
    from .history import write_atomic
    return write_atomic(Path(history_root) / signature / PEAKS_FILE, peaks)


def load_measured(history_root: Path | None, signature: str) -> dict | None:
    if history_root is None:
        return None
    path = Path(history_root) / signature / PEAKS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def percent(value: float, peak: float | None) -> float | None:
    return 100.0 * value / peak if peak else None
