"""Checkpoint builds shared between processes: one build of a checkpoint at a time, and processes that need the same
checkpoints (two parallel test workers, two side-by-side benchmark runs) split the work instead of queueing."""

import fcntl
import threading
import time

import pytest

from quantbench.formats import checkpoints
from quantbench.formats.checkpoints import BuildingElsewhere, _build_into, build_fixtures

pytestmark = pytest.mark.stack_independent


def _hold_lock(final):
    """Another process building ``final``: its lock held through a file description of its own."""
    final.parent.mkdir(parents=True, exist_ok=True)
    held = open(final.parent / f".{final.name}.lock", "a")
    fcntl.flock(held, fcntl.LOCK_EX)
    return held


def test_a_build_another_process_holds_is_waited_for_and_taken_not_built_again(tmp_path):
    final, builds = tmp_path / "kind-abc", []
    held = _hold_lock(final)
    with pytest.raises(BuildingElsewhere):
        _build_into(final, lambda tmp: builds.append("ours"), wait=False)

    def other_process_finishes():  # the holder's build lands, then its lock goes
        time.sleep(0.3)
        final.mkdir()
        (final / ".complete").write_text('{"by": "the other"}')
        held.close()
    threading.Thread(target=other_process_finishes).start()
    assert _build_into(final, lambda tmp: builds.append("ours")) == {"by": "the other"}
    assert builds == []  # waited for, never built twice


def test_kinds_another_process_is_building_are_left_for_last(monkeypatch):
    calls = []

    def ensure(spec, kind, device, force=False, wait=True):
        calls.append((kind, wait))
        if kind == "awq-gemm" and not wait:
            raise BuildingElsewhere(kind)
        return kind
    monkeypatch.setattr(checkpoints, "ensure_checkpoint", ensure)
    built = build_fixtures("tiny", ["awq-gemm", "ct-w4a16", "gptq"], progress=False)
    assert [kind for kind, _ in calls] == ["dense", "awq-gemm", "ct-w4a16", "gptq", "awq-gemm"]
    assert calls[-1] == ("awq-gemm", True)  # the second pass waits for the other process's build
    assert list(built) == ["dense", "awq-gemm", "ct-w4a16", "gptq"]  # in the usual order


def test_a_kind_another_process_is_building_is_said_so_not_called_unbuildable(tiny_checkpoints, tmp_path, monkeypatch):
    """ensure_checkpoint turns a builder's own exception into 'unsupported: building ... failed'; a build held by
    another process is not that (the first parallel CI run stated awq-gemm unbuildable on one worker, and its tests
    failed on the missing checkpoint)."""
    import shutil

    from quantbench.formats.checkpoints import checkpoint_dir, ensure_checkpoint
    from quantbench.specs import load_spec
    monkeypatch.setenv("QUANTBENCH_CACHE", str(tmp_path / "cache"))
    spec = load_spec("tiny")
    shutil.copytree(tiny_checkpoints["dense"], checkpoint_dir(spec, "dense"))  # the dense base, built
    held = _hold_lock(checkpoint_dir(spec, "awq-gemm"))
    with pytest.raises(BuildingElsewhere):
        ensure_checkpoint(spec, "awq-gemm", "cpu", wait=False)
    held.close()
