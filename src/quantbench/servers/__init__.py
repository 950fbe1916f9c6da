"""Server registry: importing this package registers every server module.

What the serving scenario (bench.serving) measures under load: vLLM's OpenAI-compatible server (vllm). Adding a
server: one module with a ``@register`` kind, one import below.
"""

from . import vllm  # noqa: F401  (registration side effects)
from .base import HOST, SERVERS, PeakRss, Server, ServerConfig, ServerKind, get_server, process_tree_rss  # noqa: F401
