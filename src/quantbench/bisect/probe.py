"""One probe: the case measured in A/B pairs, the good release against the probed one, decided by the gate's
own paired test. Side by side (one core each) where the machine has two cores to spare, else one after the
other with the side that goes first alternating (quantbench.side_by_side)."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import QuantbenchError
from ..side_by_side import Command, cores, run_side_by_side
from .releases import last_line, with_overlay
from .search import Probe

BENCH = "benchmarks/test_generation.py"
PHASE_METRIC = {"decode": "decode_tokens_per_s", "prefill": "prefill_tokens_per_s"}


@dataclass(frozen=True)
class Target:
    """The case a bisection measures: its stored name, the metric decided on, and the pytest run that makes it."""

    name: str
    metric: str
    pytest_args: tuple[str, ...]

    def command(self, *extra: str) -> list[str]:
        """The pytest run of the case, with ``extra`` options (where its JSON and history go)."""
        return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *self.pytest_args, *extra]


def target_for(case: str, rounds: int, new_tokens: int | None = None, extra: tuple[str, ...] = ()) -> Target:
    """A generation case's id ("tiny-bf16-transformers-b1-p16-decode", or its stored name) -> the run that
    measures it alone (its prefill beside it: one matrix cell is both phases)."""
    from ..runtimes import RUNTIMES

    case_id = case.removeprefix("test_generation[").removesuffix("]")
    for runtime in sorted(RUNTIMES.values(), key=lambda r: -len(r.name)):
        parts = case_id.rsplit(f"-{runtime.name}-b", 1)
        if len(parts) != 2 or "-" not in parts[0]:
            continue
        head, tail = parts
        shape = tail.split("-")
        if len(shape) != 3 or not shape[0].isdigit() or not shape[1].startswith("p") or shape[2] not in PHASE_METRIC:
            continue
        model, fmt = _model_and_format(head)
        args = ["--qb-models", model, "--qb-formats", fmt + (runtime.format_suffix or ""), "--qb-batch", shape[0],
                "--qb-prompt", shape[1][1:], "--qb-rounds", str(rounds)]
        if new_tokens:
            args += ["--qb-new-tokens", str(new_tokens)]
        return Target(f"test_generation[{case_id}]", PHASE_METRIC[shape[2]], (BENCH, *extra, *args))
    raise QuantbenchError(None, f"{case!r} is not a generation case's id",
                          "pass one as the suite names it, e.g. tiny-bf16-transformers-b1-p16-decode")


def _model_and_format(head: str) -> tuple[str, str]:
    """'qwen2.5-3b-ct-w4a16' -> ('qwen2.5-3b', 'ct-w4a16'): the longest registered format name at the end."""
    from ..formats import FORMATS

    for fmt in sorted(FORMATS, key=len, reverse=True):
        if head.endswith(f"-{fmt}"):
            return head[: -len(fmt) - 1], fmt
    model, _, fmt = head.rpartition("-")
    return model, fmt


def measure_pairs(target: Target, overlays: dict[str, Path | None], pairs: int, history: str, out_dir: Path,
                  cwd: Path, progress=None) -> dict[str, list[dict]]:
    """``pairs`` runs of each side ("good", "probe"); each side's run payloads, in pair order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    side_by_side = len(cores()) >= 2
    runs: dict[str, list[dict]] = {side: [] for side in overlays}
    for pair in range(pairs):
        commands, outs = [], {}
        for side, folder in overlays.items():
            outs[side] = out_dir / f"pair{pair}-{side}.json"
            env = {**with_overlay(os.environ, folder), "OMP_NUM_THREADS": "1"}
            commands.append(Command(target.command(f"--benchmark-json={outs[side]}", f"--qb-history={history}"),
                                    cwd=cwd, env=env))
        if side_by_side:
            results = run_side_by_side(commands, rotate=pair)
        else:  # one after the other, the side that goes first alternating
            order = list(range(len(commands)))[::(-1 if pair % 2 else 1)]
            done = {i: run_side_by_side([commands[i]])[0] for i in order}
            results = [done[i] for i in range(len(commands))]
        for (side, out), result in zip(outs.items(), results):
            if not out.is_file() and side == "probe" and (out_dir / f"pair{pair}-good.json").is_file():
                # the case raised on this release and was not even stated (an error in the library): a result
                raise ProbeRunFailed(f"exit {result.returncode}: {_failure_words(result.stdout)}")
            if not out.is_file():
                raise QuantbenchError(out, f"the {side} side's run wrote no results (exit {result.returncode}): "
                                      f"{last_line(result.stdout)}", "run the case alone to see why")
            runs[side].append(json.loads(out.read_text()))
        if progress is not None:
            progress.update(1)
        if stated_in(runs["probe"][-1], target):  # crashed or unsupported there: the result, no pair more
            break
    return runs


class ProbeRunFailed(Exception):
    """The probed release's run failed where the good release's did not, with no stated case to read."""


def _failure_words(stdout: str) -> str:
    """pytest's words for the first failure: its 'E ' line (the exception), else its last line."""
    errors = [line[1:].strip() for line in (stdout or "").splitlines() if line.startswith("E ")]
    return errors[0] if errors else last_line(stdout)


def stated_in(payload: dict, target: Target):
    """The case's stated Sample (crashed, unsupported, ...) in a run, or None where it was measured."""
    from ..gate.inputs import samples
    return samples(payload).get((target.name, "*"))


def decide_probe(version: str, target: Target, runs: dict[str, list[dict]], threshold, seconds: float,
                 find: str = "slower") -> Probe:
    """The gate's paired decision on the probed release's runs against the good release's: "bad" where it
    regressed (``find`` "slower") or improved ("faster")."""
    from ..gate.decisions import Sample, decide
    from ..gate.inputs import samples

    good, probed = ([samples(p).get((target.name, key)) for p in runs[side]]
                    for side, key in (("good", target.metric), ("probe", target.metric)))
    stated = [stated_in(p, target) for p in runs["probe"]]
    if any(s is not None for s in stated):  # crashed or unsupported on this release: a result, never an error
        first = next(s for s in stated if s is not None)
        return Probe(version, "bad", why=f"{first.state}: {first.reason}", seconds=seconds)
    if any(s is None for s in good) or any(s is None for s in probed):
        raise QuantbenchError(None, f"{target.name} was not measured on every run of both sides",
                              "check that the good release runs the case (quantbench history lists its runs)")
    a, b = [s.value for s in good], [s.value for s in probed]
    decision = decide(target.name, target.metric, Sample(statistics.median(b), runs=tuple(b)),
                      Sample(statistics.median(a), runs=tuple(a)), threshold, paired=True, blind_spots=False)
    verdict = "bad" if decision.state == {"slower": "regressed", "faster": "improved"}[find] else "good"
    return Probe(version, verdict, decision.ratio, decision.p_value, decision.message(), seconds)


def timed_probe(version: str, target: Target, overlays: dict[str, Path | None], pairs: int, history: str,
                out_dir: Path, cwd: Path, threshold, progress=None, find: str = "slower") -> Probe:
    start = time.perf_counter()
    try:
        runs = measure_pairs(target, overlays, pairs, history, out_dir, cwd, progress)
    except ProbeRunFailed as exc:  # bad whatever is looked for: the case no longer runs
        return Probe(version, "bad", why=f"the run failed ({exc})", seconds=time.perf_counter() - start)
    return decide_probe(version, target, runs, threshold, time.perf_counter() - start, find)
