import sys

import pytest
import torch

from quantbench.measure import HostStepTimer, PeakMemory, resident_weight_bytes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM reset is Linux-only")
def test_peak_rss_is_reset_per_case():
    peak = PeakMemory("cpu")
    big = torch.ones(64 * 1024 * 1024, dtype=torch.uint8)  # 64 MiB touched
    first = peak.peak_bytes()
    del big
    peak.reset()
    second = peak.peak_bytes()
    assert first - second > 32 * 1024 * 1024


def test_resident_bytes_counts_shared_storage_once():
    lin = torch.nn.Linear(128, 64, bias=False)
    model = torch.nn.Sequential(lin, torch.nn.Linear(64, 128, bias=False))
    model[1].weight = torch.nn.Parameter(lin.weight.data.t())  # a view of the same storage
    got = resident_weight_bytes(model)
    assert got["total"] == 128 * 64 * 4 and got["by_dtype"] == {"float32": 128 * 64 * 4}


def test_host_step_timer_intervals():
    timer = HostStepTimer()
    for _ in range(4):
        timer.mark()
    assert len(timer.intervals_s()) == 3 and all(t >= 0 for t in timer.intervals_s())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_step_timer_measures_device_time():
    from quantbench.measure import CudaStepTimer
    timer = CudaStepTimer()
    a = torch.randn(4096, 4096, device="cuda")
    timer.mark()
    a @ a
    timer.mark()
    assert timer.intervals_s()[0] > 0
