"""The guide: findings (pure functions on run tables), the kernel crossover, charts and the Markdown
page per machine signature (guide). Reads history only; no torch."""

from .guide import render_all, render_runs, render_signature  # noqa: F401
