"""The history in PostgreSQL: a real server (tests/pgserver.py), never a mock. The same runs give the
same guide and the same gate decisions as a folder; concurrent and killed writers lose nothing and
leave nothing half-stored; every failure is one line with the fix."""

import copy
import json
import math
import signal
import subprocess
import sys
import time

import pytest

from quantbench import gate, history, report
from quantbench.gate import load_thresholds
from quantbench.history.postgres import SCHEMA, DbRun, migrate, redact
from quantbench.paths import THRESHOLDS

from .conftest import REPO, run_cli, run_pytest
from .test_history import payload as small_run
from .test_report import payload as guide_run

pytestmark = pytest.mark.stack_independent  # the store and the plugin's plumbing, not the libraries


def _night(when: str, scale: float = 1.0) -> dict:
    return guide_run(scale, when)


def _store(url):
    return history.open_store(url)


def test_runs_round_trip_once_each_in_the_folders_order(pg_url, tmp_path):
    store, folder = _store(pg_url), history.FolderStore(tmp_path / "hist")
    runs = [small_run(value=0.01 * (i + 1)) for i in range(3)]
    for i, run in enumerate(runs):
        run["datetime"] = f"2026-11-2{i}T00:00:00+00:00"
    runs[1]["benchmarks"][0]["extra_info"]["guard_cosine"] = float("nan")  # jsonb has no NaN: tagged, restored
    for run in runs:
        path, new = folder.save(run, added=True)
        ref, stored_now = store.save(run, name=path.name)
        assert new and stored_now and isinstance(ref, DbRun)
    again, stored_now = store.save(copy.deepcopy(runs[2]), added=True)  # same runs: stored once
    assert not stored_now and again.name == folder.runs()[-1].name
    assert [r.name for r in store.runs()] == [p.name for p in folder.runs()]
    assert store.signatures() == folder.signatures() == ["sig-a"]
    loaded = store.load(store.runs()[1])
    assert math.isnan(loaded["benchmarks"][0]["extra_info"]["guard_cosine"])
    assert store.load(store.latest("sig-a")) == history.load_run(folder.latest("sig-a"))
    assert store.find(store.runs()[0].name) == store.runs()[0]
    store.save_peaks("sig-a", {"memory_gbps": 17.4, "source": "measured"})
    assert store.load_peaks("sig-a")["memory_gbps"] == 17.4
    count = store.connection().execute("SELECT count(*), count(DISTINCT run_key) FROM quantbench_runs").fetchone()
    assert count == (3, 3)
    assert str(store.runs()[0]).startswith(redact(pg_url)) and "qb-test-secret" not in str(store.runs()[0])
    store.close()


def test_the_guide_from_the_database_is_byte_identical_to_the_folders(pg_url, tmp_path):
    """Import a folder, render from the database, from the folder and from the database's export."""
    folder = tmp_path / "hist"
    for when, scale in (("2026-11-20T00:00:00+00:00", 1.0), ("2026-11-21T00:00:00+00:00", 0.7),
                        ("2026-11-22T00:00:00+00:00", 1.0)):
        history.save_run(folder, _night(when, scale))
    history.FolderStore(folder).save_peaks("h100-test", {"memory_gbps": 3000.0, "tflops": {"float16": 700.0,
                                                         "bfloat16": 700.0}, "source": "measured: test"})
    imported = run_cli("history", "import", str(folder), "--history", pg_url)
    assert imported.returncode == 0 and "3 stored, 0 already stored, 0 skipped" in imported.stdout
    assert "3 stored" in imported.stdout and "qb-test-secret" not in imported.stdout
    exported = run_cli("history", "export", "--history", pg_url, "--to", str(tmp_path / "exported"))
    assert exported.returncode == 0, exported.stderr
    thresholds = load_thresholds(THRESHOLDS)
    texts = {}
    for name, source in (("folder", folder), ("database", pg_url), ("exported", tmp_path / "exported")):
        out = tmp_path / name
        readme, changes_page = report.render_all(source, out, thresholds)  # the signature's guide, the Changes page
        texts[name] = {p.name: p.read_bytes() for p in readme.parent.iterdir() if p.suffix in (".md", ".svg")}
        texts[name]["CHANGES.md"] = changes_page.read_bytes()
    assert len(texts["folder"]) >= 5 and b"## History" in texts["folder"]["README.md"]
    assert texts["database"] == texts["folder"] == texts["exported"]
    assert (tmp_path / "exported" / "h100-test" / "peaks.json").is_file()


def test_the_gate_decides_the_same_from_the_database_and_the_folder(pg_url, tmp_path):
    folder = tmp_path / "hist"
    nights = [_night(f"2026-11-2{i}T00:00:00+00:00", 0.7 if i == 3 else 1.0) for i in range(4)]
    for night in nights:
        history.save_run(folder, night)
    assert run_cli("history", "import", str(folder), "--history", pg_url).returncode == 0
    thresholds = load_thresholds(THRESHOLDS)
    decided = {}
    for name, source in (("folder", history.FolderStore(folder)), ("database", _store(pg_url))):
        current_ref = source.latest()
        current = history.load_ref(source, current_ref)
        for baseline in ("latest", "previous"):
            refs = gate.resolve_baselines(baseline, source, current, current_ref)
            baselines = [p for _, p in history.collapse(history.read_all(source, refs))]
            result = gate.run_gate(current, baselines, thresholds)
            decided[name, baseline] = [(d.case, d.metric, d.state, d.ratio) for d in result.decisions]
    assert decided["folder", "latest"] == decided["database", "latest"] == decided["database", "previous"]
    assert any(state == "regressed" for _, _, state, _ in decided["database", "latest"])
    cli = run_cli("gate", "--current", "latest", "--baseline", "latest", "--history", pg_url)
    assert cli.returncode == 1 and "REGRESSED" in cli.stdout and "qb-test-secret" not in cli.stdout


WRITER = """
import json, sys, time
from quantbench import history
store = history.open_store(sys.argv[1])
lines = list(sys.stdin) if len(sys.argv) > 2 else sys.stdin
time.sleep(max(0.0, float(sys.argv[2]) - time.time()) if len(sys.argv) > 2 else 0)  # all writers at once
for line in lines:
    where, new = store.save(json.loads(line))
    print("stored" if new else "again", where.name, flush=True)
"""


def _writer(url, start_at=None):
    at = [str(start_at)] if start_at else []
    return subprocess.Popen([sys.executable, "-c", WRITER, url, *at], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_eight_writers_at_once_lose_nothing_and_store_nothing_twice(pg_url):
    """Into a fresh database (the first connections race to create the schema): 8 processes x 5 runs,
    each writer also storing one of its neighbour's runs again."""
    runs = [[small_run(value=0.01) for _ in range(5)] for _ in range(8)]
    for w, mine in enumerate(runs):
        for i, run in enumerate(mine):
            run["datetime"] = f"2026-11-22T00:{w:02d}:{i:02d}+00:00"
    start_at = time.time() + 8  # after every writer has imported quantbench (2 cores, 8 processes)
    writers = [_writer(pg_url, start_at) for _ in range(8)]
    for w, proc in enumerate(writers):
        lines = [json.dumps(r) for r in runs[w] + [runs[(w + 1) % 8][0]]]
        proc.stdin.write("\n".join(lines) + "\n")
        proc.stdin.close()
    outputs = [(proc.stdout.read(), proc.stderr.read()) for proc in writers]
    for proc in writers:
        proc.wait(timeout=120)
    assert all(proc.returncode == 0 for proc in writers), [err for _, err in outputs]
    said = [line.split()[0] for out, _ in outputs for line in out.splitlines()]
    store = _store(pg_url)
    stored = store.runs("sig-a")
    assert len(stored) == 40 and len({r.name for r in stored}) == 40
    assert said.count("stored") == 40 and said.count("again") == 8
    assert sorted(store.load(r)["datetime"] for r in stored) == sorted(r["datetime"] for m in runs for r in m)
    assert store.connection().execute("SELECT max(version) FROM quantbench_schema").fetchone()[0] == SCHEMA
    store.close()


def test_a_writer_killed_mid_store_leaves_no_partial_run(pg_url):
    """Large runs (~8 MB of JSON each) stored one after another; the writer is killed with SIGKILL while
    the server shows its INSERT running: every stored run is whole, the one cut off is not there."""
    big = small_run(value=0.01, n=200_000)
    big["quantbench"]["marker"] = "complete"
    writer = _writer(pg_url)
    writer.stdin.write(_with_time(big, 0) + "\n")
    writer.stdin.flush()
    assert writer.stdout.readline().startswith("stored")
    for i in range(1, 6):
        writer.stdin.write(_with_time(big, i) + "\n")
    writer.stdin.flush()
    store = _store(pg_url)
    watch = store.connection()
    deadline = time.time() + 60
    while time.time() < deadline and not watch.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'quantbench' AND pid <> "
            "pg_backend_pid() AND state = 'active' AND query LIKE 'INSERT INTO quantbench_runs%%'").fetchone()[0]:
        time.sleep(0.005)
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    printed = 1 + sum(line.startswith("stored") for line in writer.stdout.read().splitlines())
    stored = store.runs()
    assert time.time() < deadline and len(stored) in (printed, printed + 1) and len(stored) < 6
    for ref in stored:
        run = store.load(ref)
        assert run["quantbench"]["marker"] == "complete" and len(run["benchmarks"][0]["stats"]["data"]) == 200_000
    store.close()


def _with_time(run: dict, i: int) -> str:
    run = dict(run, datetime=f"2026-11-22T01:00:{i:02d}+00:00")
    return json.dumps(run)


def test_an_older_schema_migrates_and_a_newer_one_is_refused_in_one_line(pg_url):
    import psycopg
    with psycopg.connect(pg_url, autocommit=True) as conn:
        migrate(conn, "test", upto=1)
    store = _store(pg_url)
    store.save(small_run())  # opening it migrated it to the current schema
    row = store.connection().execute("SELECT count(*) FROM quantbench_cases").fetchone()  # the view of schema 2
    assert row == (1,)
    store.connection().execute("INSERT INTO quantbench_schema (version) VALUES (%s)", (SCHEMA + 1,))
    store.close()
    listed = run_cli("history", "--history", pg_url)
    assert listed.returncode == 2 and "Traceback" not in listed.stderr
    assert listed.stderr.count("\n") == 1 and f"schema version {SCHEMA + 1} is newer" in listed.stderr
    assert "Fix: upgrade quantbench" in listed.stderr and "qb-test-secret" not in listed.stderr


def test_unreachable_and_refused_databases_are_one_line_with_the_fix(postgres):
    for url, said in ((postgres.url(password="wrong-secret"), "password authentication failed"),
                      (postgres.url().replace(str(postgres.port), "1"), "cannot reach the database"),
                      (postgres.url("no_such_db"), 'database "no_such_db" does not exist')):
        for args in (("history", "--history", url), ("report", "--history", url, "--out", "/tmp/qb-unused"),
                     ("gate", "--current", "latest", "--baseline", "latest", "--history", url)):
            result = run_cli(*args)
            assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
            assert said in result.stderr and "Fix:" in result.stderr and result.stderr.count("\n") == 1
            assert "secret" not in result.stderr + result.stdout


def test_a_benchmark_run_stores_into_the_database_or_keeps_its_json(postgres, pg_url, tiny_checkpoints, tmp_path):
    """The database away: the run goes on, says so in one line, keeps its JSON, fails; `history --add`
    stores it later, once. The password never reaches the run's record or the terminal."""
    out = tmp_path / "run.json"
    away = pg_url.replace(str(postgres.port), "1")
    result = run_pytest("benchmarks/test_generation.py", "--qb-models", "tiny", "--qb-formats", "bf16",
                        "--qb-batch", "1", "--qb-prompt", "16", "--qb-new-tokens", "4", "--qb-rounds", "2",
                        "-k", "decode", f"--qb-history={away}", f"--benchmark-json={out}", "-q")
    assert result.returncode == 1 and "1 passed" in result.stdout, result.stdout[-2000:]
    assert "history NOT saved" in result.stdout and "cannot reach the database" in result.stdout
    assert "Traceback" not in result.stdout and "secret" not in result.stdout + out.read_text()
    # the retry command works as printed: no literal *** password in it (bad-inputs.md), the URL by the environment
    assert "--history env:QUANTBENCH_HISTORY (set it to your history URL) --add FILE" in result.stdout
    run = history.load_run(out)
    assert any("postgresql://qb:***@" in arg for arg in history.section(run)["args"])
    for said in ("stored as", "already stored as"):
        added = run_cli("history", "--history", pg_url, "--add", str(out))
        assert added.returncode == 0 and said in added.stdout, added.stderr
    assert len(_store(pg_url).runs()) == 1


def test_a_nightly_sharded_two_ways_is_one_run_and_a_missing_shard_is_named(pg_url, tiny_checkpoints, tmp_path):
    """Two nights, each two shards run at the same time by two processes into one database: the gate
    and the guide read each night as one run; with a shard deleted, its cases are 'missing'."""
    from .conftest import run_pytest_side_by_side
    args = ["benchmarks/test_generation.py", "--qb-models", "tiny", "--qb-formats", "bf16,fp16", "--qb-batch",
            "1", "--qb-prompt", "16", "--qb-new-tokens", "4", "--qb-rounds", "3", "-k", "decode",
            f"--qb-history={pg_url}", "-q"]
    for night in ("n1", "n2"):
        results = run_pytest_side_by_side(*[args + [f"--qb-shard={i}/2", f"--qb-group={night}"] for i in (1, 2)])
        assert all(r.returncode == 0 for r in results), [r.stdout[-1500:] for r in results]
    store = _store(pg_url)
    names = [r.name for r in store.runs()]
    assert len(names) == 4 and sum("_gn2-" in n for n in names) == 2
    plans = [history.section(store.load(r))["shard"]["cases"] for r in store.runs()]
    assert all(len(p["1"]) == len(p["2"]) == 1 for p in plans)  # one model per shard, every shard knows both
    # What is tested is which runs make a night, not noise: two pytest processes side by side on 2 cores read
    # one case at 0.51x of the other in CI (3 rounds can only be gated on the ratio), so the ratio is wide open.
    lenient = tmp_path / "lenient.toml"
    lenient.write_text(THRESHOLDS.read_text() + "\n[[overrides]]\npattern = \"*\"\nmax_regression = 0.95\n")
    gate_args = ("gate", "--group", "n2", "--baseline", "latest", "--history", pg_url, "--baseline-runs", "1",
                 "--thresholds", str(lenient))
    gated = run_cli(*gate_args)
    assert gated.returncode == 0, gated.stdout + gated.stderr
    assert "group n2: all 2 shards stored, gated as one run" in gated.stdout and "group n1:" in gated.stdout
    assert "missing" not in gated.stdout.split("quantbench gate: passed")[-1]
    readme, _ = report.render_all(pg_url, tmp_path / "guide", load_thresholds(THRESHOLDS))
    text = readme.read_text()
    assert "tiny" in text and "fp16" in text and "bf16" in text and "missing" not in text
    store.connection().execute("DELETE FROM quantbench_runs WHERE name LIKE %s", ("%_gn2-2of2.json",))
    store.close()
    gated = run_cli(*gate_args)
    assert gated.returncode == 0, gated.stdout + gated.stderr  # missing is stated, not a regression
    assert "shard(s) 2 of 2 not stored" in gated.stdout
    assert "tiny-fp16-transformers-b1-p16-decode" in gated.stdout and "shard 2/2 of group n2 was not stored" in \
        gated.stdout
    readme, _ = report.render_all(pg_url, tmp_path / "guide2", load_thresholds(THRESHOLDS))
    assert "shard 2/2 of group n2 was not stored" in readme.read_text()


@pytest.mark.stack_independent
def test_a_password_in_any_url_scheme_never_leaves_the_url(tmp_path):
    """T39 (shared/research/bad-inputs.md): SQLAlchemy's postgresql+psycopg://u:secret@... was not recognised: the
    run was stored in a local folder named after the URL, printed with its password and kept in the run's args."""
    from quantbench.errors import BadHistory
    from quantbench.history.postgres import PostgresStore
    url = "postgresql+psycopg://u:secret@127.0.0.1:1/x"
    assert redact(url) == "postgresql+psycopg://u:***@127.0.0.1:1/x"
    assert redact("mysql://root:hunter2@db/x and https://a:b@c/") == "mysql://root:***@db/x and https://a:***@c/"
    assert history.is_database(url) and PostgresStore(url).url == "postgresql://u:secret@127.0.0.1:1/x"
    with pytest.raises(BadHistory) as refused:  # no folder named after a URL, no password in the line
        history.open_store("mysql://root:hunter2@db/x")
    assert "hunter2" not in refused.value.line() and "postgresql://" in refused.value.line()
    out = tmp_path / "run.json"
    done = run_pytest(str(REPO / "benchmarks" / "test_generation.py"), "--qb-models", "tiny", "--qb-formats", "bf16",
                      "--qb-batch", "1", "--qb-prompt", "16", "--qb-new-tokens", "4", "--qb-rounds", "2",
                      "-k", "decode",
                      f"--qb-history={url}", f"--benchmark-json={out}", "-q", cwd=tmp_path.parent)
    assert "secret" not in done.stdout + done.stderr
    assert "history NOT saved" in done.stdout and done.returncode == 1  # nothing listens on port 1
    assert "secret" not in out.read_text()
    assert not list(tmp_path.parent.glob("postgresql*"))  # no local folder named after the URL
