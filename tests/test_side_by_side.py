"""quantbench.side_by_side: which side starts first alternates with ``rotate``; results keep the commands' order."""

import subprocess
import sys

import pytest

from quantbench import side_by_side
from quantbench.side_by_side import Command, run_side_by_side

pytestmark = pytest.mark.stack_independent


def test_rotate_alternates_which_command_starts_first_and_results_keep_their_order(monkeypatch):
    started = []
    real_popen = subprocess.Popen

    def recording_popen(args, **kwargs):
        started.append(args[-1])
        return real_popen(args, **kwargs)

    monkeypatch.setattr(side_by_side.subprocess, "Popen", recording_popen)
    commands = [Command([sys.executable, "-c", "print('a')", "a"]), Command([sys.executable, "-c", "print('b')", "b"])]
    orders = []
    for rotate in range(2):
        started.clear()
        results = run_side_by_side(commands, rotate=rotate, timeout=60)
        assert [r.stdout.strip() for r in results] == ["a", "b"]
        orders.append(list(started))
    # Before, side "a" always started first: it led "b" through every phase of every pair.
    assert orders == [["a", "b"], ["b", "a"]]
