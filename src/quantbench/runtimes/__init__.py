"""Runtime registry: importing this package registers every runtime module.

What executes a loaded checkpoint: transformers' eager forward (eager), and its decode step compiled
over a StaticCache (compiled). Adding a runtime: one module with a ``@register`` class, one import below.
"""

# Import order is registry order: the default runtime first.
from . import eager  # noqa: F401, I001  (registration side effects)
from . import compiled  # noqa: F401
from .base import DEFAULT, RUNTIMES, Runtime, get_runtime, parse_runtimes, split_format_suffix  # noqa: F401
