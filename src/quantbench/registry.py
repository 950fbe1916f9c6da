"""What the format, runtime and server registries share: one instance per registered class under its name, a
lookup that names the fix, and a comma list of names where 'all' stands for every registered one in registry
order, validated, each once."""

from __future__ import annotations

from collections.abc import Callable

from .errors import QuantbenchError


def registrar(registry: dict, kind: str) -> Callable:
    """The class decorator of ``registry``: one instance of the class under its ``name`` (``kind`` words the
    error of a name registered twice)."""
    def register(cls):
        instance = cls()
        if instance.name in registry:
            raise RuntimeError(f"{kind} {instance.name!r} registered twice")
        registry[instance.name] = instance
        return cls
    return register


def lookup(registry: dict, name: str, kind: str, fix_tail: str = ""):
    """``registry[name]``, or a one-line error naming every registered name."""
    if name not in registry:
        raise QuantbenchError(None, f"unknown {kind} {name!r}", f"use one of: {', '.join(registry)}{fix_tail}")
    return registry[name]


def parse_names(text: str, registry: dict, get: Callable) -> list[str]:
    """``get(name)`` raises (with the fix) for a name not in ``registry``."""
    names: list[str] = []
    for token in (t.strip() for t in text.split(",")):
        for name in (list(registry) if token == "all" else [token] if token else []):
            get(name)
            if name not in names:
                names.append(name)
    return names
