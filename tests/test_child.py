"""The one child-process supervisor (quantbench.child) the engine worker, vLLM's server and its client share."""

import os
import signal
import sys
import time

import pytest

from quantbench.child import ChildProcess

pytestmark = pytest.mark.stack_independent

# A child that starts a helper of its own (as vLLM's API server starts its engine core), says both pids, notes a
# SIGTERM in its log before it exits, and otherwise waits.
_PARENT_OF_HELPER = """import signal, subprocess, sys, time
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
def term(*_):
    print("got SIGTERM", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
print("pids", __import__("os").getpid(), helper.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _pids(child: ChildProcess) -> list[int]:
    assert child.wait_until(time.monotonic() + 30, lambda: "pids" in child.log_text(), 0.05)
    return [int(p) for p in child.log_text().split("pids", 1)[1].split()[:2]]


@pytest.mark.parametrize("grace_s", [0.0, 5.0])
def test_a_stop_ends_the_childs_whole_group_with_a_grace_when_asked(tmp_path, grace_s):
    """3ae1c25's serving client was started in a session of its own and killed by its leader only: a helper it
    started outlived it. One supervisor stops the group: SIGTERM first where it has a grace, SIGKILL otherwise."""
    child = ChildProcess.command("stand-in", [sys.executable, "-c", _PARENT_OF_HELPER], tmp_path / "log.txt",
                                 grace_s=grace_s)
    leader, helper = _pids(child)
    assert os.getpgid(leader) == leader != os.getpgid(os.getpid())  # its own session
    child.stop()
    assert not _alive(leader) and not _alive(helper)
    assert ("got SIGTERM" in child.log_text()) == (grace_s > 0)
    assert child.exitcode() == (0 if grace_s > 0 else -signal.SIGKILL)


def test_a_deadline_wait_says_ready_exited_or_late(tmp_path):
    quick = ChildProcess.command("exits", [sys.executable, "-c", "print('last words here')"], tmp_path / "a.txt")
    assert quick.wait_until(time.monotonic() + 30, lambda: False, 0.05) is False  # exited before it was ready
    assert quick.log_tail(1) == ["last words here"]
    slow = ChildProcess.command("sleeps", [sys.executable, "-c", "import time; time.sleep(600)"], tmp_path / "b.txt")
    with pytest.raises(TimeoutError):
        slow.wait_until(time.monotonic() + 0.5, lambda: False, 0.05)
    slow.stop()
    assert not slow.alive()
