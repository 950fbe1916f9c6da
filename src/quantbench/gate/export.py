"""Export a run to github-action-benchmark's customBiggerIsBetter / customSmallerIsBetter JSON."""

from __future__ import annotations

from pathlib import Path

from .. import history
from ..errors import State
from .inputs import samples
from .thresholds import Thresholds

UNITS = {"decode_tokens_per_s": "tokens/s", "prefill_tokens_per_s": "tokens/s", "ttft_s": "s",
         "peak_memory_bytes": "bytes",
         "weight_bytes_after_first_forward": "bytes", "tflops": "TFLOP/s", "gbps": "GB/s"}


def github_action_benchmark(payload: dict, thresholds: Thresholds) -> dict[str, list[dict]]:
    """{'customBiggerIsBetter': [...], 'customSmallerIsBetter': [...]} entries of name/unit/value/range."""
    out = {"customBiggerIsBetter": [], "customSmallerIsBetter": []}
    device = history.device_kind(payload)
    for (case, metric), sample in sorted(samples(payload).items()):
        if sample.state != State.OK:
            continue
        direction = thresholds.for_case(case, metric, device).direction
        entry = {"name": f"{case} {metric}", "unit": UNITS.get(metric, ""), "value": sample.value}
        if len(sample.rounds) > 1:
            entry["range"] = f"{min(sample.rounds):.6g} .. {max(sample.rounds):.6g}"
        out["customBiggerIsBetter" if direction == "higher" else "customSmallerIsBetter"].append(entry)
    return out


def write_github_action_benchmark(payload: dict, thresholds: Thresholds, out_dir: Path) -> list[Path]:
    written = []
    for tool, entries in github_action_benchmark(payload, thresholds).items():
        written.append(history.write_atomic(Path(out_dir) / f"{tool}.json", entries))
    return written
