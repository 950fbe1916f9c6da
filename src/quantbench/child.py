"""The one supervisor of every child process the suite starts: an isolated engine worker (bench.isolation), vLLM's
server (servers.vllm) and vLLM's benchmark client (bench.serving).

Each child runs in its own process group (a stop takes the helpers it started: compile workers, vLLM's engine
core), writes its output to a log file, dies with this process (a parent-death signal, and for a server a
watchdog that outlives a SIGKILL of pytest), is waited on against a deadline, stopped with a grace, and quoted
by its last log lines. Standard library only: every layer may start one.
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

LOG_TAIL_BYTES = 64 * 1024
GROUP_GONE_S = 30.0   # a worker can outlive its leader by seconds; the next child must find the device released
JOIN_S = 30.0
_LIVE: set[ChildProcess] = set()


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In the child: PR_SET_PDEATHSIG, ``sig`` when the parent goes, however it goes (Linux; a no-op elsewhere)."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, sig)
    except (OSError, AttributeError):
        pass


def become_child(log_path: str) -> None:
    """The first step of a function started with ``ChildProcess.function``: its own process group, death with
    its parent (SIGKILL: a Python child's handlers may be busy in native code), stdout and stderr to the log."""
    os.setpgid(0, 0)
    die_with_parent(signal.SIGKILL)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)


class ChildProcess:
    """A started child: its pid, whether it runs, a deadline wait, a stop with grace, its last words."""

    def __init__(self, what: str, log_path: Path, handle, grace_s: float = 0.0,
                 watchdog: subprocess.Popen | None = None):
        self.what, self.log_path, self._handle, self._watchdog = what, Path(log_path), handle, watchdog
        self.grace_s = grace_s  # a stop's default: SIGTERM, then SIGKILL after this (0: SIGKILL at once)
        _LIVE.add(self)

    @classmethod
    def command(cls, what: str, argv: list[str], log_path: Path, env: dict | None = None, pipes: bool = False,
                grace_s: float = 0.0, watchdog: bool = False) -> ChildProcess:
        """``argv`` in a new session, output to ``log_path`` (with ``pipes``: stdin and stdout are text pipes for a
        line protocol, stderr goes to the log). ``watchdog``: a second process ends the group (with the same
        grace) if this one is killed outright (SIGKILL runs no exit hook; the parent-death signal reaches the
        leader only)."""
        with open(log_path, "ab") as log:
            process = subprocess.Popen(argv, env=env, start_new_session=True, text=pipes,
                                       stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                                       stdout=subprocess.PIPE if pipes else log,
                                       stderr=log if pipes else subprocess.STDOUT,
                                       preexec_fn=functools.partial(die_with_parent, signal.SIGTERM))  # noqa: PLW1509
        return cls(what, log_path, _Command(process), grace_s, _watch_group(process.pid, grace_s) if watchdog else None)

    @classmethod
    def function(cls, what: str, target: Callable, args: tuple, log_path: Path) -> ChildProcess:
        """``target(*args)`` in a spawned Python process (no fork of this one's threads or device state); the
        target calls ``become_child(log_path)`` first."""
        process = multiprocessing.get_context("spawn").Process(target=target, name=f"quantbench {what}", args=args)
        process.start()
        return cls(what, log_path, _Function(process))

    @property
    def pid(self) -> int:
        return self._handle.pid

    @property
    def popen(self) -> subprocess.Popen:
        return self._handle.process

    def exitcode(self) -> int | None:
        """None while it runs; its exit status, or minus the signal that ended it."""
        return self._handle.exitcode()

    def alive(self) -> bool:
        return self.exitcode() is None

    def join(self, timeout_s: float = JOIN_S) -> int | None:
        return self._handle.join(timeout_s)

    def wait_until(self, deadline: float, ready: Callable[[], bool], poll_s: float) -> bool:
        """Until ``ready()`` (True) or the child's exit (False); TimeoutError past ``deadline`` (time.monotonic)."""
        while not ready():
            if not self.alive():
                return False
            if time.monotonic() > deadline:
                raise TimeoutError(self.what)
            time.sleep(poll_s)
        return True

    def stop(self, grace_s: float | None = None) -> None:
        """SIGTERM to the group and SIGKILL after ``grace_s`` (the child's own by default; at once with 0);
        returns once none of the group is left, or GROUP_GONE_S have passed."""
        _LIVE.discard(self)
        grace_s = self.grace_s if grace_s is None else grace_s
        if self.alive():
            signals = ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)) if grace_s > 0 else ((signal.SIGKILL, 5.0),)
            for sig, wait_s in signals:
                if not _signal_group(self.pid, sig):
                    self._handle.kill()  # no group yet (a spawned child that has not reached setpgid)
                if self.join(wait_s) is not None:
                    break
        _signal_group(self.pid, signal.SIGKILL)  # helpers left behind once the leader is gone
        self.join()
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
            self._watchdog = None
        wait_group_gone(self.pid, GROUP_GONE_S)

    def log_text(self) -> str:
        """The log's last LOG_TAIL_BYTES ("" when there is none)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(max(0, log.seek(0, 2) - LOG_TAIL_BYTES))
                return log.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines: int) -> list[str]:
        """The last ``lines`` non-empty lines of the log: what the child said before it stopped."""
        return [line for line in self.log_text().splitlines() if line.strip()][-lines:]


class _Command:
    def __init__(self, process: subprocess.Popen):
        self.process, self.pid = process, process.pid

    def exitcode(self):
        return self.process.poll()

    def join(self, timeout_s):
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        self.process.kill()


class _Function:
    def __init__(self, process):
        self.process, self.pid = process, process.pid

    def exitcode(self):
        return self.process.exitcode

    def join(self, timeout_s):
        self.process.join(timeout_s)
        return self.process.exitcode

    def kill(self):
        self.process.kill()


def _signal_group(group: int, sig: int) -> bool:
    try:
        os.killpg(group, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def wait_group_gone(group: int, limit_s: float) -> bool:
    """Poll until no process of ``group`` is left (zombies reaped by their parents), at most ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        time.sleep(0.1)
    return False


# A watchdog in a session of its own, reading a pipe only this process holds open: when it dies however it dies (a
# runner's command limit sends SIGKILL, which runs no teardown or exit hook; a kill of pytest's own process group
# does not reach it), the read ends and the child's group gets SIGTERM, then SIGKILL after the grace.
_WATCHDOG = """import os, signal, sys, time
sys.stdin.buffer.read()
group = int(sys.argv[1])
try:
    os.killpg(group, signal.SIGTERM)
    time.sleep(float(sys.argv[2]))
    os.killpg(group, signal.SIGKILL)
except ProcessLookupError:
    pass
"""


def _watch_group(group: int, grace_s: float) -> subprocess.Popen:
    """Its stdin's write end stays open in this process only (close_fds): EOF exactly when this process is gone."""
    return subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(group), str(grace_s)],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


@atexit.register
def _stop_live_children() -> None:
    """A pytest that exits without its session teardown (sys.exit from a hook, an uncaught error) stops its
    children here; SIGKILL runs no exit hook: the parent-death signal and the watchdog handle that."""
    for child in list(_LIVE):
        child.stop()
