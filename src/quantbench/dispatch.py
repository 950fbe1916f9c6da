"""What ran underneath a kernel, and what a runtime in a child process tells its parent before it may die.

A runtime names its linear kernel class, but on a CPU that class often calls a torch op that oneDNN
implements, and oneDNN picks the implementation per primitive at run time: a brgemm/AMX kernel, a JIT one,
or its scalar ``ref`` reference (vLLM's FP8 path on a Xeon ran ``ref:any``, ~20x slower per call than
the AMX bf16 matmul beside it, a decode 100x slower than the same case on an AMD machine). One short
forward outside the timed rounds with oneDNN's verbose log on says which.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

GEMM_PRIMITIVES = ("matmul", "inner_product", "convolution")
NAIVE_MARK = "naive fallback"  # in a kernel string: report.findings' NAIVE FALLBACK reads it
ONEDNN_MARK = " [oneDNN "      # where kernel_words' oneDNN part of a kernel string starts
# gptqmodel formats write "... backend=<name> -> <class>: <what it does>"; auto is the library's own pick
NAMED_BACKEND_MARK, AUTO_BACKEND_MARK = "backend=", "backend=auto "
CHANNEL = None  # in a child process of bench.isolation: its pipe to the parent
LOG_PATH = None  # ... and the log file its stdout and stderr go to


def report(**facts) -> None:
    """Facts the parent process keeps in case this one dies next (the kernel an engine picked before its
    first forward, the stage it is in). Outside a child process there is no one to tell."""
    if CHANNEL is not None:
        import pickle
        CHANNEL.send_bytes(pickle.dumps(("note", facts)))


def parse_verbose(text: str, event: str = "exec") -> dict[str, int]:
    """oneDNN's verbose lines -> 'kind impl (src x wei -> dst)' -> executions (``event`` 'exec') or creations
    ('create': create:cache_miss / cache_hit lines). Pure. The field after the event is the engine, then the
    primitive kind, the implementation, the propagation kind, the memory descriptors."""
    seen: Counter = Counter()
    for line in text.splitlines():
        fields = line.strip().split(",")
        if not fields or fields[0] not in ("onednn_verbose", "dnnl_verbose"):
            continue
        at = next((i for i, f in enumerate(fields) if f == event or f.startswith(f"{event}:")), None)
        if at is None:
            continue
        if len(fields) < at + 6:
            continue
        kind, impl, descriptors = fields[at + 2], fields[at + 3], fields[at + 5]
        dtypes = dict(_dtype(d) for d in descriptors.split() if ":" in d)
        types = " x ".join(filter(None, (dtypes.get("src"), dtypes.get("wei")))) or "?"
        seen[f"{kind} {impl} ({types} -> {dtypes.get('dst', '?')})"] += 1
    return dict(seen)


def _dtype(descriptor: str) -> tuple[str, str]:
    name, dtype = descriptor.split(":")[:2]
    return name, dtype


def naive_primitives(primitives: dict[str, int]) -> list[str]:
    """The GEMM primitives oneDNN ran with its reference (``ref``) implementation: a naive fallback."""
    return [p for p in primitives if p.split(" ")[0] in GEMM_PRIMITIVES and p.split(" ")[1].startswith("ref")]


def kernel_words(kernel: str, primitives: dict[str, int]) -> str:
    """The kernel string with oneDNN's naive GEMMs named (the gate's kernel-changed state sees a move from a
    brgemm/AMX implementation to ``ref``; the guide's NAIVE FALLBACK finding reads the mark)."""
    naive = naive_primitives(primitives)
    if not naive:
        return kernel
    return f"{kernel}{ONEDNN_MARK}{', '.join(sorted(naive))}: {NAIVE_MARK}]"


def library_words(kernel: str | None) -> str:
    """A kernel string without the oneDNN part kernel_words appends (whose 'naive fallback' is oneDNN's)."""
    return (kernel or "").split(ONEDNN_MARK)[0]


def chosen_by(kernel: str | None) -> str | None:
    """'named backend' where the format names the library's backend (gptq-torch, awq-gemm-hf-torch), 'library'
    where the library (or its auto mode) chose; None without a kernel string."""
    if not kernel:
        return None
    return "named backend" if NAMED_BACKEND_MARK in kernel and AUTO_BACKEND_MARK not in kernel else "library"


@contextlib.contextmanager
def _stdout_to(path: str):
    """The process's file descriptor 1 (C's stdout, where oneDNN prints) into ``path`` for the block."""
    _flush_c_stdout()
    saved = os.dup(1)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.dup2(target, 1)
        yield
    finally:
        _flush_c_stdout()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(target)


def onednn_primitives(forward) -> dict[str, int]:
    """Run ``forward()`` with oneDNN's verbose log on; the primitives it executed (empty where this torch has
    no oneDNN, or the forward used none)."""
    import torch
    if not torch.backends.mkldnn.is_available():
        forward()
        return {}
    with _captured_c_stdout() as out, torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        forward()
    return parse_verbose(out[0])


@contextlib.contextmanager
def _captured_c_stdout():
    """C stdout (where oneDNN prints) into a scratch file for the block; yields a list holding its text after."""
    text: list[str] = []
    with tempfile.NamedTemporaryFile(prefix="quantbench-onednn-", suffix=".log") as log:
        with _stdout_to(log.name):
            yield text
        text.append(Path(log.name).read_text(errors="replace"))


@contextlib.contextmanager
def onednn_creations(device):
    """The oneDNN primitives created inside the block, by every copy of oneDNN in the process: vLLM's _C
    library links one of its own, which torch's verbose switch does not reach, so ONEDNN_VERBOSE is set to
    profile_create (creations only, never an executed primitive: nothing is printed per timed call). A copy
    reads it once, at its first primitive: this sees a process's first engine, the one in a child process,
    whose log keeps the lines; in the parent's own process C stdout goes to a scratch file for the block.
    Yields the dict, filled when the block ends."""
    found: dict[str, int] = {}
    if device.type != "cpu" or "ONEDNN_VERBOSE" in os.environ:  # the user's own verbose setting is theirs
        yield found
        return
    os.environ["ONEDNN_VERBOSE"] = "profile_create"
    try:
        if LOG_PATH is not None:
            start = os.path.getsize(LOG_PATH)
            yield found
            _flush_c_stdout()
            with open(LOG_PATH, errors="replace") as log:
                log.seek(start)
                found.update(parse_verbose(log.read(), "create"))
            return
        with _captured_c_stdout() as out:
            yield found
        found.update(parse_verbose(out[0], "create"))
        sys.stdout.write("".join(line for line in out[0].splitlines(keepends=True)
                                 if not line.startswith("onednn_verbose")))
    finally:
        os.environ.pop("ONEDNN_VERBOSE", None)  # not for the processes the engine starts later


def _flush_c_stdout() -> None:
    sys.stdout.flush()
    ctypes.CDLL(None).fflush(None)
