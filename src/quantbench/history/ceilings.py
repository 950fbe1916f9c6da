"""Device ceilings for the roofline: datasheet numbers for known GPUs, and the measured ones stored
beside a signature's runs (``quantbench peaks``). Datasheet figures are dense (no sparsity)
tensor-core TFLOP/s for 16-bit inputs and HBM/GDDR bandwidth. No torch here."""

from __future__ import annotations

import json
from pathlib import Path

from .store import write_atomic

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


PEAKS_FILE = "peaks.json"


def save_measured(history_root: Path, signature: str, peaks: dict) -> Path:
    return write_atomic(Path(history_root) / signature / PEAKS_FILE, peaks)


def load_measured(history_root: Path, signature: str) -> dict | None:
    path = Path(history_root) / signature / PEAKS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def percent(value: float, peak: float | None) -> float | None:
    return 100.0 * value / peak if peak else None
