"""Storing and reading runs: pytest-benchmark JSON files, one folder per machine signature.

Files stay plain pytest-benchmark JSON (``pytest-benchmark compare`` reads them); quantbench adds
``machine_info.quantbench`` (environment, signature, git) and a top-level ``quantbench`` section
(schema version, states of cases that produced no number, telemetry). No torch import here.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

from ..errors import BadHistory
from . import record
from .record import MIGRATIONS, SCHEMA_VERSION, migrate

INTERRUPTED_REASON = "cut off inside its timed rounds (a time limit or Ctrl-C): its partial times are no result"
RUN_ROUNDS_KEY = "run_round_times_s"  # extra_info of a merged benchmark: which round times came from which run
MIGRATE_FIX = "re-run the benchmark with this quantbench to write a current file (older files are kept as they are)"


# ----------------------------------------------------------------------------- writing
def write_atomic(path: Path, payload: dict) -> Path:
    """Write JSON to a temp file in the same folder, fsync, then rename: readers see all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=1, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def run_filename(payload: dict, at_run_time: bool = False) -> str:
    """Sortable by time, unique across concurrent writers (uuid), and says which commit. Named by the
    time of saving (the end of the run), or with ``at_run_time`` by the run's own start time, so that
    a run stored later (``quantbench history --add``) still sorts where it was measured and is not
    taken for the newest by 'latest'."""
    when = datetime.now(UTC)
    if at_run_time and payload.get("datetime"):
        try:
            when = datetime.fromisoformat(payload["datetime"])
        except (TypeError, ValueError):
            pass  # not an ISO time: the time of saving
        else:  # pytest-benchmark writes UTC; a naive time is taken as UTC too
            when = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    stamp = when.strftime("%Y%m%dT%H%M%S%f")
    commit = (record.commit(payload).get("id") or "nocommit")[:8]
    return f"{stamp}_{commit}_{uuid.uuid4().hex[:8]}{shard_suffix(payload)}.json"


def shard_suffix(payload: dict) -> str:
    """``_g<group>-<i>of<n>`` for a shard of a sharded run (``--qb-shard``): the stores group shards by
    name, without reading every file."""
    shard = record.section(payload).get("shard") or {}
    if not shard.get("group"):
        return ""
    return f"_g{shard_group_name(shard['group'])}-{shard['index']}of{shard['count']}"


def shard_group_name(group) -> str:
    """A group id as it appears in a run's name (letters, digits, '.' and '-')."""
    return re.sub(r"[^A-Za-z0-9.-]", "-", str(group))


def signature(payload: dict) -> str:
    return record.machine(payload).get("signature") or "unknown"


def save_run(root: Path, payload: dict, at_run_time: bool = False) -> Path:
    """Store one run under root/<signature>/ and return its path. Never overwrites."""
    return write_atomic(Path(root) / signature(payload) / run_filename(payload, at_run_time), payload)


# ----------------------------------------------------------------------------- reading
def load_run(path: Path) -> dict:
    """Read and validate one history file (or the journal of a run that did not end: its finished cases, marked
    interrupted); every failure is a BadHistory naming the file."""
    path = Path(path)
    from . import journal
    if journal.is_journal(path) and path.is_file():
        return check_payload(journal.payload(path), path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BadHistory(path, "no such history file",
                         "check the path (`quantbench history --history DIR` lists the stored runs)") from None
    except UnicodeDecodeError:
        raise BadHistory(path, "not a text file", "pass a pytest-benchmark JSON file written by quantbench") from None
    if not text.strip():
        raise BadHistory(path, "empty file", "delete it; it holds no run")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        # The parser ran off the end: the file stops early. A file cut inside a string reports the
        # string's start instead (only an unclosed string at the end of the text is "unterminated"),
        # one cut inside a literal ("nul") the literal's start: on the file's last line, where an
        # indented pytest-benchmark file (one value per line) cannot have a fault mid-file.
        body = text.rstrip()
        last_line = body.count("\n") + 1
        if (exc.pos >= len(body) or exc.msg.startswith("Unterminated string")
                or (last_line > 1 and exc.lineno == last_line)):
            raise BadHistory(path, f"truncated JSON (ends early at {where})",
                             "the run that wrote it was interrupted; delete it or restore it from CI "
                             "artifacts") from None
        raise BadHistory(path, f"corrupt JSON ({exc.msg} at {where})",
                         "delete it or restore it from CI artifacts") from None
    return check_payload(payload, path)


def check_payload(payload, where) -> dict:
    """A parsed run checked and migrated to the current schema, from a file or a database row; a run
    that cannot be read is a BadHistory naming where it is."""
    path = where
    if not isinstance(payload, dict) or "benchmarks" not in payload:
        raise BadHistory(path, "not a pytest-benchmark JSON file (no 'benchmarks' list)",
                         "pass a file written by pytest --benchmark-json or quantbench --qb-history")
    section = payload.get("quantbench")
    version = section.get("schema_version") if isinstance(section, dict) else None
    if version is None:
        raise BadHistory(path, "no quantbench schema version (written by plain pytest-benchmark or a "
                         "pre-release quantbench)", MIGRATE_FIX)
    if version < SCHEMA_VERSION and version not in MIGRATIONS:
        raise BadHistory(path, f"old schema version {version} (this quantbench reads {SCHEMA_VERSION})", MIGRATE_FIX)
    if version > SCHEMA_VERSION:
        raise BadHistory(path, f"schema version {version} is newer than this quantbench ({SCHEMA_VERSION})",
                         "upgrade quantbench")
    return migrate(payload)


def run_files(root: Path, signature_name: str | None = None) -> list[Path]:
    root = Path(root)
    # Run files are named <timestamp>_<commit>_<uuid>.json; peaks.json and others sit beside them.
    pattern = f"{signature_name}/[0-9]*_*.json" if signature_name else "*/[0-9]*_*.json"
    # Oldest first by name (<UTC timestamp>_...), not by path: across signature folders the path sorts
    # by the folder first, and 'latest' would be the newest run of the alphabetically last stack.
    return sorted((p for p in root.glob(pattern) if not p.name.startswith(".")), key=lambda p: (p.name, str(p)))


def latest_run(root: Path, signature_name: str | None = None) -> Path:
    files = run_files(root, signature_name)
    if not files:
        where = Path(root) / signature_name if signature_name else Path(root)
        raise BadHistory(where, "no history files (empty baseline folder)",
                         "run the benchmark with --qb-history on the baseline first, or pass --baseline PATH")
    return files[-1]
