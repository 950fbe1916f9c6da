"""Run commands at the same time, each pinned to its own core: the A/B pairs of the PR gate
(``nox -s gate``) and of the gate's end-to-end tests. Standard library only: noxfile.py imports it.

On a shared VM the whole machine drifts by 10-20% over tens of seconds; runs side by side share the
drift, runs one after another do not (docs/gate.md has the figures). ``rotate`` shifts which core
each command gets, so that pairs alternate and a slower core is not always the same side's.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Command:
    args: list[str]
    cwd: str | Path | None = None
    env: dict | None = None
    log: Path | None = None          # the command's output goes here; None: captured in memory


def cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def run_side_by_side(commands: list[Command], rotate: int = 0, timeout: float | None = None
                     ) -> list[subprocess.CompletedProcess]:
    """Start every command, each on core (index + rotate) mod n when there are as many cores, and wait
    for all; the results' stdout holds each command's output (stderr joined in), in the order of
    ``commands``. ``rotate`` also rotates the order they start in: the one started first leads the
    others through every phase by its start-up's head, so no side is always first."""
    available, started = cores(), {}
    for index in launch_order(len(commands), rotate):
        command, pin = commands[index], None
        if len(available) >= len(commands):
            core = available[(index + rotate) % len(commands)]
            pin = (lambda core=core: os.sched_setaffinity(0, {core}))
        sink = open(command.log, "w") if command.log else subprocess.PIPE  # noqa: SIM115 - closed below
        started[index] = (command, sink, subprocess.Popen(command.args, cwd=command.cwd, env=command.env, stdout=sink,
                                                          stderr=subprocess.STDOUT, text=True, preexec_fn=pin))
    results = []
    for index in range(len(commands)):
        command, sink, proc = started[index]
        stdout, _ = proc.communicate(timeout=timeout)
        if command.log:
            sink.close()
            stdout = Path(command.log).read_text(errors="replace")
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, ""))
    return results


def launch_order(count: int, rotate: int) -> list[int]:
    """The command indices in the order they start: 0..count-1 shifted by ``rotate``."""
    return [(index + rotate) % count for index in range(count)] if count else []
