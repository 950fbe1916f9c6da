"""Where runs are kept: a folder (one machine, the default) or a PostgreSQL database (a fleet).

Both hold the same thing, the pytest-benchmark JSON of each run under its machine signature and a
name (``<start>_<commit>_<uuid>[_g<group>-<i>of<n>].json``, the file name in a folder), and answer
the same questions: which signatures, which runs of one (oldest first), load one, store one, the
measured ceilings of a signature. A folder names a run by its path, the database by ``DbRun``.
Runs that are shards of one nightly (one group) are read as one run: ``units`` / ``collapse``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import BadHistory
from . import ceilings, record
from .merge import combine_group, run_ids
from .store import latest_run, load_run, run_files, save_run, signature

DATABASE_SCHEMES = ("postgresql://", "postgres://")
_DATABASE_URL = re.compile(r"^postgres(?:ql)?(?:\+\w+)?://")   # SQLAlchemy's postgresql+psycopg:// too
_ANY_URL = re.compile(r"^[A-Za-z][\w.+-]*://")
# the group part of a sharded run's name: _g<group>-<index>of<count>.json
_GROUP = re.compile(r"_g(?P<group>[A-Za-z0-9.-]+)-(?P<index>\d+)of(?P<count>\d+)\.json$")


def is_database(location) -> bool:
    return bool(_DATABASE_URL.match(str(location)))


def open_store(location):
    """A FolderStore for a path, a PostgresStore for a ``postgresql://`` URL (connected lazily);
    ``env:NAME`` reads either from the environment variable NAME, which keeps a URL with a password off
    command lines, and so out of CI logs and the run's recorded arguments."""
    if str(location).startswith("env:"):
        name = str(location)[4:]
        if not os.environ.get(name):
            raise BadHistory(location, f"the environment variable {name} is not set",
                             f"set {name} to a history folder or a postgresql:// URL")
        location = os.environ[name]
    if is_database(location):
        from .postgres import PostgresStore
        return PostgresStore(str(location))
    if _ANY_URL.match(str(location)):  # never a folder named after a URL (and its password)
        from .postgres import redact
        raise BadHistory(redact(location), "a URL quantbench cannot store a history in",
                         "pass a folder, or a postgresql:// URL (postgresql+psycopg:// is read as postgresql://)")
    return FolderStore(location)


def group_of(name: str) -> tuple[str, int, int] | None:
    """(group id, shard index, shard count) of a sharded run's name, None for a whole run."""
    found = _GROUP.search(name)
    return (found["group"], int(found["index"]), int(found["count"])) if found else None


def units(refs: list, name_of) -> list[list]:
    """Stored runs (oldest first) -> the runs a gate or a guide reads: a whole run alone, the shards of
    one group together; ordered by each unit's newest member. Pure."""
    members: dict[str, list] = {}
    for ref in refs:
        group = group_of(name_of(ref))
        members.setdefault(f"group:{group[0]}" if group else f"run:{name_of(ref)}", []).append(ref)
    return sorted(members.values(), key=lambda unit: name_of(unit[-1]))


def collapse(runs: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """(where, payload) pairs, oldest first -> the same with each group's shards combined into one run
    (its missing shards' cases stated), placed where its newest shard was. Pure."""
    grouped: dict[tuple, list[tuple[int, str, dict]]] = {}
    for index, (where, payload) in enumerate(runs):
        group = (record.section(payload).get("shard") or {}).get("group")
        key = ("group", group, signature(payload)) if group else ("run", index)
        grouped.setdefault(key, []).append((index, where, payload))
    out = []
    for key, members in grouped.items():
        newest = max(index for index, _, _ in members)
        if key[0] == "group":
            where = f"group {key[1]}: " + ", ".join(where for _, where, _ in members)
            out.append((newest, where, combine_group([payload for _, _, payload in members])))
        else:
            out.append((newest, members[0][1], members[0][2]))
    return [(where, payload) for _, where, payload in sorted(out, key=lambda item: item[0])]


class FolderStore:
    """history/<signature>/<run>.json: the default, nothing to set up."""

    def __init__(self, root):
        self.root = Path(root)
        self.label = str(root)

    def signatures(self) -> list[str]:
        if self.root.is_file():
            raise BadHistory(self.root, "a file, not a history folder",
                             "pass the folder that holds <signature>/ folders as --history, or render the file "
                             "itself with `quantbench report FILE`")
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and run_files(self.root, p.name))

    def runs(self, signature_name: str | None = None) -> list[Path]:
        return run_files(self.root, signature_name)

    def latest(self, signature_name: str | None = None) -> Path:
        return latest_run(self.root, signature_name)

    def load(self, ref) -> dict:
        return load_run(ref)

    def load_raw(self, ref) -> dict:
        """The run as stored (checked, not migrated): what an export writes."""
        load_run(ref)
        return json.loads(Path(ref).read_text())

    @staticmethod
    def name_of(ref) -> str:
        return Path(ref).name

    @staticmethod
    def signature_of(ref) -> str:
        return Path(ref).parent.name

    def save(self, payload: dict, added: bool = False) -> tuple[Path, bool]:
        """Store a run; ``added`` (``history --add``): named by its own start time, and not stored again
        when a file already holds the same runs. Returns (where, stored now)."""
        if added:
            twin = self.stored_as(payload)
            if twin is not None:
                return twin, False
        return save_run(self.root, payload, at_run_time=added), True

    def stored_as(self, payload: dict):
        for path in self.runs(signature(payload)):
            try:
                if run_ids(load_run(path)) == run_ids(payload):
                    return path
            except BadHistory:
                continue  # a damaged file holds no run; listing the history names it
        return None

    def find(self, text: str):
        """A run named on the command line: a file path, or <signature>/<name> or <name> in this folder."""
        for candidate in (Path(text), self.root / text):
            if candidate.is_file():
                return candidate
        hits = [p for p in self.runs() if p.name == text]
        return hits[-1] if hits else None

    def load_peaks(self, signature_name: str) -> dict | None:
        return ceilings.load_measured(self.root, signature_name)

    def save_peaks(self, signature_name: str, peaks: dict):
        return ceilings.save_measured(self.root, signature_name, peaks)

    def check(self) -> None:
        """Found out before a run, not after an hour of benchmarks when the run is stored."""
        if self.root.exists() and not self.root.is_dir():  # T34 said "cannot create it (File exists)"
            raise BadHistory(self.root, "a file, not a folder", "pass a folder (it is created if missing)")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BadHistory(self.root, f"cannot create it ({exc.strerror})", "pass a writable folder") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise BadHistory(self.root, "not writable", "pass a writable folder")

    def close(self) -> None:
        pass


def load_ref(store, ref) -> dict:
    """A run named by a path (any file, whatever the store) or by its store."""
    return load_run(ref) if isinstance(ref, Path) else store.load(ref)


def read_all(store, refs: list, warn=None) -> list[tuple[str, dict]]:
    """Load runs as (where, payload); with ``warn`` a run that does not load is reported and skipped
    (a whole-history command), without it the BadHistory is raised (a run named explicitly)."""
    out = []
    for ref in refs:
        try:
            out.append((str(ref), load_ref(store, ref)))
        except BadHistory as exc:
            if warn is None:
                raise
            warn(exc)
    return out
