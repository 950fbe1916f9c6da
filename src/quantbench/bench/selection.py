"""--qb-formats x --qb-runtimes -> the (format, runtime) pairs a run measures."""

from __future__ import annotations

from ..errors import QuantbenchError
from ..formats import FORMATS, get_format
from ..runtimes import RUNTIMES, parse_runtimes, split_format_suffix


def _format(name: str) -> str:
    try:
        return get_format(name).name
    except QuantbenchError as exc:
        suffixes = "".join(f"; any of them with {r.format_suffix} appended (= runtime {r.name})"
                           for r in RUNTIMES.values() if r.format_suffix)
        raise QuantbenchError(None, exc.problem, exc.fix + suffixes) from None


def parse_pairs(formats: str, runtimes: str = "transformers") -> list[tuple[str, str]]:
    """Each format of ``formats`` ('all' = every registered one) on each runtime of ``runtimes``; a
    format named with a runtime's suffix ('bf16+compile', the name before runtimes were an axis)
    runs on that runtime only. Validated, in order, each pair once."""
    chosen = parse_runtimes(runtimes)
    pairs: list[tuple[str, str]] = []
    for token in (t.strip() for t in formats.split(",")):
        if not token:
            continue
        base, runtime = split_format_suffix(token)
        if runtime is None and "@" in token and token.split("@", 1)[0] in FORMATS:  # T03: the runtime is unknown
            suffixes = ", ".join(r.format_suffix for r in RUNTIMES.values() if (r.format_suffix or "").startswith("@"))
            raise QuantbenchError(None, f"--qb-formats {token!r}: unknown runtime suffix "
                                  f"'@{token.split('@', 1)[1]}' (the format {token.split('@', 1)[0]!r} is known)",
                                  f"use one of: {suffixes}, or list the runtimes with --qb-runtimes")
        names = list(FORMATS) if token == "all" else [_format(base)]
        for pair in ((name, r) for name in names for r in ([runtime] if runtime else chosen)):
            if pair not in pairs:
                pairs.append(pair)
    return pairs
