"""What the format and runtime registries share: a comma list of names, where 'all' stands for every
registered one in registry order, validated, each once."""

from __future__ import annotations

from collections.abc import Callable


def parse_names(text: str, registry: dict, get: Callable) -> list[str]:
    """``get(name)`` raises (with the fix) for a name not in ``registry``."""
    names: list[str] = []
    for token in (t.strip() for t in text.split(",")):
        for name in (list(registry) if token == "all" else [token] if token else []):
            get(name)
            if name not in names:
                names.append(name)
    return names
