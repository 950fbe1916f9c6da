"""A history in PostgreSQL, shared by a fleet of runners (psycopg 3).

One row per run: the pytest-benchmark JSON whole (JSONB) and the columns queries need. A run is
stored in one transaction keyed by its identity (signature, shard, the runs it holds), so storing it
twice stores it once and a writer killed mid-store leaves nothing. The schema is created on first
use and migrated under an advisory lock; a database newer than this quantbench is refused.
Credentials come from the URL, PG* variables or ~/.pgpass (libpq's own rules) and are never printed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from typing import NamedTuple

from ..errors import BadHistory, HistoryUnavailable, redact  # redact: history imports it from here
from . import record
from .merge import run_ids
from .store import check_payload, run_filename, signature

SCHEMA = 2
LOCK = 0x71B7  # pg_advisory_xact_lock key: one migrating connection at a time
MIGRATIONS = {
    1: ["""CREATE TABLE quantbench_runs (
            id bigserial PRIMARY KEY,
            run_key text NOT NULL UNIQUE,          -- sha256 of (signature, shard, the runs it holds)
            signature text NOT NULL,
            name text NOT NULL,                    -- its file name in a history folder
            run_ids text[] NOT NULL,
            commit text,
            started_at timestamptz,
            stored_at timestamptz NOT NULL DEFAULT now(),
            stack text,
            device text,
            group_id text,
            shard integer,
            shards integer,
            payload jsonb NOT NULL,
            UNIQUE (signature, name))""",
        "CREATE INDEX quantbench_runs_group ON quantbench_runs (group_id) WHERE group_id IS NOT NULL",
        """CREATE TABLE quantbench_peaks (
            signature text PRIMARY KEY,
            peaks jsonb NOT NULL,
            stored_at timestamptz NOT NULL DEFAULT now())"""],
    # one row per case, for dashboards (Grafana, Superset) that read the database directly
    2: ["""CREATE VIEW quantbench_cases AS
            SELECT r.id AS run, r.signature, r.name AS run_name, r.commit, r.started_at, r.stack, r.device,
                   r.group_id, r.shard, b->>'name' AS case_name, b->'extra_info'->>'state' AS state,
                   b->'extra_info'->>'format' AS format, b->'extra_info'->>'runtime' AS runtime,
                   (b->'extra_info'->>'batch')::int AS batch, (b->'extra_info'->>'prompt_len')::int AS prompt_len,
                   b->'extra_info'->>'phase' AS phase, (b->'stats'->>'median')::float8 AS median_s,
                   (b->'stats'->>'iqr')::float8 AS iqr_s, (b->'stats'->>'rounds')::int AS rounds,
                   b->'extra_info' AS extra_info
            FROM quantbench_runs r CROSS JOIN LATERAL jsonb_array_elements(r.payload->'benchmarks') b"""],
}
def libpq_url(url: str) -> str:
    """A PostgreSQL URL as libpq reads it: SQLAlchemy's driver suffix (postgresql+psycopg://) dropped."""
    return re.sub(r"^postgres(?:ql)?\+[\w]+://", "postgresql://", url)


class DbRun(NamedTuple):
    """A run stored in a database: printed as <database>/<signature>/<name>."""

    where: str
    signature: str
    name: str

    def __str__(self) -> str:
        return f"{self.where}/{self.signature}/{self.name}"


def run_key(payload: dict) -> str:
    shard = (record.section(payload).get("shard") or {}).get("index")
    identity = json.dumps([signature(payload), shard, sorted(run_ids(payload))])
    return hashlib.sha256(identity.encode()).hexdigest()


def dumps(payload: dict) -> str:
    """JSON for a jsonb column, which has no NaN or Infinity: those travel as {"$float": "NaN"}."""
    try:
        return json.dumps(payload, allow_nan=False, default=str)
    except ValueError:
        return json.dumps(_tag_nonfinite(payload), allow_nan=False, default=str)


def loads(text: str) -> dict:
    return json.loads(text, object_hook=lambda d: float(d["$float"]) if d.keys() == {"$float"} else d)


def _tag_nonfinite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": repr(value).replace("inf", "Infinity").replace("nan", "NaN")}
    if isinstance(value, dict):
        return {k: _tag_nonfinite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tag_nonfinite(v) for v in value]
    return value


def unavailable(where: str, exc: Exception) -> HistoryUnavailable:
    """psycopg's error -> one line naming the database (never its password) and the fix."""
    said = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    said = redact(said.removeprefix("connection failed: "))
    if "password authentication failed" in said or "no password supplied" in said:
        return HistoryUnavailable(where, f"login refused ({said})",
                                  "give the password in the URL, PGPASSWORD or ~/.pgpass, for the user the URL names")
    if re.search(r'database ".*" does not exist', said):
        return HistoryUnavailable(where, said, "create it (createdb NAME) or fix the database name in the URL")
    if "permission denied" in said:
        return HistoryUnavailable(where, said, "grant this user CREATE, SELECT and INSERT on the quantbench_* tables")
    return HistoryUnavailable(where, f"cannot reach the database ({said})",
                              "check host and port in the URL (or PGHOST / PGPORT), that the server is running and "
                              "accepts this runner (TLS: sslmode / sslrootcert in the URL)")


def migrate(conn, where: str, upto: int = SCHEMA) -> int:
    """Create or migrate the schema to ``upto`` in one transaction; returns the version found."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS quantbench_schema (version integer NOT NULL, "
                     "migrated_at timestamptz NOT NULL DEFAULT now())")
        found = conn.execute("SELECT coalesce(max(version), 0) FROM quantbench_schema").fetchone()[0]
        if found > SCHEMA:
            raise HistoryUnavailable(where, f"database schema version {found} is newer than this quantbench's "
                                     f"({SCHEMA})", "upgrade quantbench on this runner to the version that wrote "
                                     "it; the database was left as it is")
        for version in range(found + 1, upto + 1):
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute("INSERT INTO quantbench_schema (version) VALUES (%s)", (version,))
    return found


class PostgresStore:
    """The history in a PostgreSQL database: the same questions as a FolderStore."""

    def __init__(self, url: str):
        self.url = libpq_url(url)
        self.label = _label(url)
        self._conn = None

    # --------------------------------------------------------------------- connection
    def connection(self):
        if self._conn is None:
            import psycopg
            options = {"application_name": "quantbench", "autocommit": True}
            if "connect_timeout" not in self.url and not os.environ.get("PGCONNECT_TIMEOUT"):
                options["connect_timeout"] = 10  # an unreachable host fails in seconds, not minutes
            try:
                conn = psycopg.connect(self.url, **options)
            except psycopg.Error as exc:
                raise unavailable(self.label, exc) from None
            try:
                migrate(conn, self.label)
            except psycopg.Error as exc:
                conn.close()
                raise unavailable(self.label, exc) from None
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _query(self, sql: str, params=()) -> list[tuple]:
        import psycopg
        try:
            return self.connection().execute(sql, params).fetchall()
        except psycopg.Error as exc:  # a dropped connection, a table removed by hand, a revoked grant
            self.close()
            raise unavailable(self.label, exc) from None

    def check(self) -> None:
        self.connection()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --------------------------------------------------------------------- reading
    def signatures(self) -> list[str]:
        rows = self._query('SELECT DISTINCT signature COLLATE "C" FROM quantbench_runs ORDER BY 1')
        return [sig for (sig,) in rows]

    def runs(self, signature_name: str | None = None) -> list[DbRun]:
        # oldest first by name (<UTC start>_...), byte order as a folder's sort: not the locale's collation
        where, params = ("WHERE signature = %s", (signature_name,)) if signature_name else ("", ())
        rows = self._query(f'SELECT signature, name FROM quantbench_runs {where} '
                           'ORDER BY name COLLATE "C", signature COLLATE "C"', params)
        return [DbRun(self.label, sig, name) for sig, name in rows]

    def latest(self, signature_name: str | None = None) -> DbRun:
        runs = self.runs(signature_name)
        if not runs:
            raise BadHistory(f"{self.label}/{signature_name or ''}".rstrip("/"), "no runs stored",
                             "run the benchmark with --qb-history on the baseline first, or pass --baseline PATH")
        return runs[-1]

    def load_raw(self, ref: DbRun) -> dict:
        rows = self._query("SELECT payload::text FROM quantbench_runs WHERE signature = %s AND name = %s",
                           (ref.signature, ref.name))
        if not rows:
            raise BadHistory(ref, "no such run in the database", "list the stored runs with quantbench history "
                             "--history URL")
        return loads(rows[0][0])

    def load(self, ref: DbRun) -> dict:
        return check_payload(self.load_raw(ref), ref)

    @staticmethod
    def name_of(ref: DbRun) -> str:
        return ref.name

    @staticmethod
    def signature_of(ref: DbRun) -> str:
        return ref.signature

    def find(self, text: str) -> DbRun | None:
        rows = self._query('SELECT signature, name FROM quantbench_runs WHERE name = %s OR '
                           "signature || '/' || name = %s ORDER BY name COLLATE \"C\" DESC LIMIT 1", (text, text))
        return DbRun(self.label, *rows[0]) if rows else None

    def load_peaks(self, signature_name: str) -> dict | None:
        rows = self._query("SELECT peaks::text FROM quantbench_peaks WHERE signature = %s", (signature_name,))
        return loads(rows[0][0]) if rows else None

    # --------------------------------------------------------------------- writing
    def save(self, payload: dict, added: bool = False, name: str | None = None) -> tuple[DbRun, bool]:
        """Store a run in one transaction; a run already stored (same identity) is not stored again.
        Returns (where, stored now)."""
        import psycopg
        sig, machine, commit = signature(payload), record.machine(payload), record.commit(payload)
        shard = record.section(payload).get("shard") or {}
        device = machine.get("device") or {}
        row = (run_key(payload), sig, name or run_filename(payload, at_run_time=added), sorted(run_ids(payload)),
               commit.get("id"), payload.get("datetime"), (machine.get("versions") or {}).get("stack"),
               device.get("gpu") or device.get("cpu"), shard.get("group"), shard.get("index"),
               shard.get("count"), dumps(payload))
        conn = self.connection()
        try:
            with conn.transaction():
                got = conn.execute(
                    "INSERT INTO quantbench_runs (run_key, signature, name, run_ids, commit, started_at, stack, "
                    "device, group_id, shard, shards, payload) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                    "%s, %s::jsonb) ON CONFLICT (run_key) DO NOTHING RETURNING signature, name", row).fetchone()
                stored_now = got is not None
                if not stored_now:
                    got = conn.execute("SELECT signature, name FROM quantbench_runs WHERE run_key = %s",
                                       (row[0],)).fetchone()
        except psycopg.Error as exc:
            self.close()
            raise unavailable(self.label, exc) from None
        return DbRun(self.label, *got), stored_now

    def save_peaks(self, signature_name: str, peaks: dict) -> str:
        self._query("INSERT INTO quantbench_peaks (signature, peaks) VALUES (%s, %s::jsonb) ON CONFLICT (signature) "
                    "DO UPDATE SET peaks = EXCLUDED.peaks, stored_at = now() RETURNING signature",
                    (signature_name, dumps(peaks)))
        return f"{self.label}/{signature_name}/peaks"


def _label(url: str) -> str:
    """The database as it may be printed: the URL with its password (if any) replaced by ***."""
    return redact(url.split("?", 1)[0])
