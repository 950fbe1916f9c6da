"""A real PostgreSQL server for the tests: Debian's binaries, a temporary data folder, a free local
port, a password login over TCP (so a wrong password is refused), stopped at the end. No mock."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

USER, PASSWORD = "qb", "qb-test-secret"
INSTALL = "apt-get update && apt-get install -y postgresql"


def binaries() -> Path | None:
    """The newest installed server's bin folder (Debian keeps initdb off PATH), or PATH's."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    if found:
        return Path(found[-1])
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    bindir: Path
    folder: Path
    port: int

    def url(self, database: str = "qb", password: str | None = PASSWORD) -> str:
        login = f"{USER}:{password}" if password is not None else USER
        return f"postgresql://{login}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:  # initdb and the server refuse root
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> Server:
        pwfile = self.folder / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
            shutil.chown(pwfile, "postgres")
        self._run("initdb", "-D", str(self.folder / "data"), "-U", USER, "--auth-local=trust",
                  "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "--no-sync")
        # fsync off: the tests check transactions and concurrency, not the server's crash durability
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-l", str(self.folder / "log"), "-w", "-o",
                  f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                  "-c max_connections=60", "start")
        return self

    def create_database(self, name: str) -> str:
        import psycopg
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def start_server() -> Server:
    bindir = binaries()
    if bindir is None:
        raise FileNotFoundError(f"no PostgreSQL server binaries (initdb, pg_ctl). Fix: {INSTALL}")
    folder = Path(tempfile.mkdtemp(prefix="quantbench-pg-"))  # in /tmp: the postgres user can reach it
    return Server(bindir, folder, _free_port()).start()
