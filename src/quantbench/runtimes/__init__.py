"""Runtime registry: importing this package registers every runtime module.

What executes a loaded checkpoint: transformers' eager forward (eager), its decode step compiled over a
StaticCache (compiled), vLLM's offline engine, compiled and eager (vllm_engine). A server measured under
load is no runtime: see quantbench.servers. Adding a runtime: one module with a ``@register`` class, one
import below.
"""

# Import order is registry order: the default runtime first.
from . import eager  # noqa: F401, I001  (registration side effects)
from . import compiled  # noqa: F401
from . import vllm_engine  # noqa: F401
from .base import DEFAULT, RUNTIMES, Runtime, Shapes, get_runtime, parse_runtimes, split_format_suffix  # noqa: F401
