"""--qb-formats x --qb-runtimes -> the (format, runtime) pairs a run measures."""

from __future__ import annotations

from ..errors import QuantbenchError
from ..formats import FORMATS, get_format
from ..registry import lookup, parse_names
from ..runtimes import RUNTIMES
from ..servers import SERVERS


def runtime_axis() -> dict:
    """What --qb-runtimes and a format's suffix name: a runtime (quantbench.runtimes: prefill and decode rounds)
    or a server (quantbench.servers: the serving scenario's load points). One axis of the case matrix."""
    return {**RUNTIMES, **SERVERS}


def _get(name: str):
    return lookup(runtime_axis(), name, "runtime", " (or 'all')")


def split_suffix(name: str) -> tuple[str, str | None]:
    """'bf16+compile' -> ('bf16', 'transformers+compile'), 'bf16@vllm-serve' -> ('bf16', 'vllm-serve'); a name
    without a suffix -> (name, None). The longest suffix wins ('@vllm+eager' before '@vllm')."""
    for runtime in sorted(runtime_axis().values(), key=lambda r: -len(r.format_suffix or "")):
        if runtime.format_suffix and name.endswith(runtime.format_suffix):
            return name[: -len(runtime.format_suffix)], runtime.name
    return name, None


def _format(name: str) -> str:
    try:
        return get_format(name).name
    except QuantbenchError as exc:
        suffixes = "".join(f"; any of them with {r.format_suffix} appended (= runtime {r.name})"
                           for r in runtime_axis().values() if r.format_suffix)
        raise QuantbenchError(None, exc.problem, exc.fix + suffixes) from None


def parse_pairs(formats: str, runtimes: str = "transformers") -> list[tuple[str, str]]:
    """Each format of ``formats`` ('all' = every registered one) on each runtime of ``runtimes``; a
    format named with a runtime's suffix ('bf16+compile', the name before runtimes were an axis)
    runs on that runtime only. Validated, in order, each pair once."""
    chosen = parse_names(runtimes, runtime_axis(), _get)
    pairs: list[tuple[str, str]] = []
    for token in (t.strip() for t in formats.split(",")):
        if not token:
            continue
        base, runtime = split_suffix(token)
        if runtime is None and "@" in token and token.split("@", 1)[0] in FORMATS:  # T03: the runtime is unknown
            suffixes = ", ".join(r.format_suffix for r in runtime_axis().values()
                                 if (r.format_suffix or "").startswith("@"))
            raise QuantbenchError(None, f"--qb-formats {token!r}: unknown runtime suffix "
                                  f"'@{token.split('@', 1)[1]}' (the format {token.split('@', 1)[0]!r} is known)",
                                  f"use one of: {suffixes}, or list the runtimes with --qb-runtimes")
        names = list(FORMATS) if token == "all" else [_format(base)]
        for pair in ((name, r) for name in names for r in ([runtime] if runtime else chosen)):
            if pair not in pairs:
                pairs.append(pair)
    return pairs
