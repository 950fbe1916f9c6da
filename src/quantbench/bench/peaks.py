"""Measured device ceilings: a large device-to-device copy and a large matmul (``quantbench peaks``);
stored and read by history.ceilings."""

from __future__ import annotations

import time


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

