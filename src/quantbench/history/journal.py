"""Every finished case kept as it finishes: a journal of JSON lines beside the run's --benchmark-json.

pytest-benchmark writes its JSON once, when pytest ends: a runner's command limit (SIGKILL), a Ctrl-C inside its
rounds or a crash of its own JSON writer would lose everything the run measured. The plugin appends each case to
``<benchmark-json>.journal.jsonl`` as it ends (one line, flushed and synced), and deletes the journal once the run's
JSON is written. A journal left behind is a run that did not end: ``quantbench history --add FILE.journal.jsonl``
stores it as a run of the cases it finished, marked interrupted with the cases it did not reach.

Lines: ``{"kind": "header", ...}`` first (pytest-benchmark's machine and commit info, the time, the run's args and
every collected case's node id), then ``{"kind": "case", "bench": {...}}`` (pytest-benchmark's own entry of a timed
case) and ``{"kind": "state", "record": {...}}`` (a stated case), in the order they ended.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import BadHistory

SUFFIX = ".journal.jsonl"
JOURNALS = ".journals"  # in a history folder: the journals of runs whose JSON lived in a scratch folder
INTERRUPTED = ("the run ended before pytest-benchmark wrote its JSON (killed, interrupted, or its writer failed): "
               "these are the cases it finished")


def journal_path(benchmark_json) -> Path:
    return Path(str(benchmark_json) + SUFFIX)


def is_journal(path) -> bool:
    return str(path).endswith(SUFFIX)


class Journal:
    """Appends lines to a journal file; every line is on disk when ``append`` returns."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the run's whole length

    def append(self, entry: dict) -> None:
        self._file.write(json.dumps(entry, default=str) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self, remove: bool = False) -> None:
        self._file.close()
        if remove:
            self.path.unlink(missing_ok=True)


def read(path) -> list[dict]:
    """The journal's lines; a last line cut off by the kill is dropped (every earlier one was synced whole)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    entries = []
    for number, line in enumerate(lines, 1):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise BadHistory(path, f"line {number} is not JSON", "the journal is damaged: keep the run's other "
                             "files, re-run what it did not keep") from None
    if not entries or entries[0].get("kind") != "header":
        raise BadHistory(path, "not a quantbench journal (no header line)", "pass a FILE.journal.jsonl that a run "
                         "wrote beside its --benchmark-json")
    return entries


def payload(path) -> dict:
    """The run a journal holds, shaped as pytest-benchmark and the plugin write it: the cases it finished, each
    stated case, and what it did not reach, marked interrupted."""
    entries = read(path)
    header = entries[0]
    benches = [e["bench"] for e in entries if e.get("kind") == "case"]
    states = [e["record"] for e in entries if e.get("kind") == "state"]
    ended = {b.get("fullname") for b in benches} | {s.get("nodeid") for s in states}
    not_reached = [nodeid for nodeid in header.get("cases", []) if nodeid not in ended]
    return {"machine_info": header["machine_info"], "commit_info": header.get("commit_info", {}),
            "benchmarks": benches, "datetime": header["datetime"], "version": header.get("version"),
            "quantbench": {"schema_version": header["machine_info"].get("quantbench", {}).get("schema_version"),
                           "states": states, "args": header.get("args", []), "telemetry_end": [],
                           "throttled": False, "peaks": None,
                           "interrupted": {"reason": INTERRUPTED, "not_reached": not_reached,
                                           "journal": str(path)}}}
