"""The runtime interface and registry: what executes a loaded checkpoint, one axis of the case matrix
beside the format (a case is model x format x runtime x batch x prompt x phase).

A runtime says what it cannot run (a format, a phase) and makes the decoder that prefill and decode
go through. Adding one is one module with a ``@register`` class and one import in __init__.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import lookup, parse_names, registrar

RUNTIMES: dict[str, Runtime] = {}
DEFAULT = "transformers"


@dataclass
class Opened:
    """A checkpoint opened by a runtime: what was loaded (its facts: kernel, memory, load time), the
    guard's outputs of its first forward, and the decoder prefill and decode go through."""

    loaded: object      # formats.LoadedModel, or a runtime's own account of what it loaded
    outputs: dict       # formats.reference.guard_outputs' keys: logits, hidden, hidden_layer
    decoder: object


@dataclass(frozen=True)
class Shapes:
    """The largest case of the run's matrix: a runtime that sizes an engine up front (vLLM) sizes it to this."""

    max_batch: int = 4
    max_prompt: int = 128
    new_tokens: int = 32


class Runtime:
    """One way of executing a checkpoint. Subclasses set the class attributes, open() and decoder()."""

    name: str = ""
    description: str = ""
    # A format name with this suffix runs on this runtime only ('bf16+compile', 'bf16@vllm'). '+compile'
    # named the compiled runtime before runtimes were an axis: history files of that time migrate by it.
    format_suffix: str | None = None
    # The format's library builds the model this runtime executes, so the format's own limits apply
    # (Format.unsupported_reason / unsupported_phase). An engine that reads the checkpoint itself: False.
    loads_through_format: bool = True
    # Runs in a child process of its own by default (bench.isolation): a third-party engine whose native code
    # has aborted or hung under this suite. --qb-isolate all / none overrides it for every runtime.
    isolate: bool = False

    def unsupported_reason(self, fmt, device) -> str | None:
        """Why this runtime cannot run ``fmt`` on ``device``, or None. Checked before loading."""
        return None

    def why_not(self, fmt, device) -> str | None:
        """Why ``fmt`` cannot run on this runtime on ``device``: the format's own reason where its library
        loads the model, then the runtime's."""
        return (self.loads_through_format and fmt.unsupported_reason(device)) or self.unsupported_reason(fmt, device)

    def why_not_phase(self, fmt, phase: str) -> str | None:
        return (self.loads_through_format and fmt.unsupported_phase(phase)) or self.unsupported_phase(fmt, phase)

    def unsupported_phase(self, fmt, phase: str) -> str | None:
        """Why this runtime does not measure ``phase`` (prefill/decode) of ``fmt``, or None."""
        return None

    def open(self, fmt, ckpt, device, guard_ids, shapes: Shapes | None = None) -> Opened:
        """Load ``ckpt`` as ``fmt`` on ``device`` and run its first forward on ``guard_ids``; ``shapes``:
        the largest case it will run."""
        raise NotImplementedError

    def decoder(self, model, device, dtype):
        """The decode runtime over a loaded model: prepare(ids, new_tokens) -> facts,
        start(ids, new_tokens) -> state, decode(state, n, timer) -> tokens."""
        raise NotImplementedError


register = registrar(RUNTIMES, "runtime")


def get_runtime(name: str) -> Runtime:
    return lookup(RUNTIMES, name, "runtime", " (or 'all')")


def parse_runtimes(text: str) -> list[str]:
    """A comma list of runtime names, or 'all' -> validated names, each once."""
    return parse_names(text, RUNTIMES, get_runtime)


def split_format_suffix(name: str) -> tuple[str, str | None]:
    """'bf16+compile' -> ('bf16', 'transformers+compile'); a name without a runtime suffix -> (name, None)."""
    for runtime in RUNTIMES.values():
        if runtime.format_suffix and name.endswith(runtime.format_suffix):
            return name[: -len(runtime.format_suffix)], runtime.name
    return name, None
