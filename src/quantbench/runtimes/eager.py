"""The eager runtime: transformers' own forward, prefill and decode as small functions (after
gpt-fast): greedy, KV-cached, no sampling noise."""

from __future__ import annotations

import torch

from .. import dispatch
from ..formats.reference import guard_outputs
from ..measure import current_bytes, resident_weight_bytes
from .base import DEFAULT, Opened, Runtime, register


@torch.inference_mode()
def prefill(model, ids: torch.Tensor):
    """Run the prompt through the model; returns (kv cache, first generated token)."""
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    next_token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
    return out.past_key_values, next_token


@torch.inference_mode()
def decode_one_token(model, cache, token: torch.Tensor):
    out = model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return out.past_key_values, out.logits[:, -1].argmax(dim=-1, keepdim=True)


@torch.inference_mode()
def decode_n_tokens(model, cache, token: torch.Tensor, n: int, timer=None) -> torch.Tensor:
    """Greedy decode of n tokens; ``timer.mark()`` after each step yields per-token latencies."""
    tokens = []
    if timer is not None:
        timer.mark()
    for _ in range(n):
        cache, token = decode_one_token(model, cache, token)
        tokens.append(token)
        if timer is not None:
            timer.mark()
    return torch.cat(tokens, dim=1)


def _prefill_and_step(model, ids: torch.Tensor) -> None:
    cache, token = prefill(model, ids)
    decode_one_token(model, cache, token)


class EagerDecoder:
    """The default runtime: the library's own forward, one call per token, a DynamicCache grown per step."""

    def __init__(self, model):
        self.model = model

    def prepare(self, ids: torch.Tensor, new_tokens: int) -> dict:
        return {"decode_runtime": "eager"}

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """The timed prefill: the prompt through the model, the first generated token."""
        return prefill(self.model, ids)[1]

    def start(self, ids: torch.Tensor, new_tokens: int):
        return prefill(self.model, ids)

    def decode(self, state, n: int, timer=None) -> torch.Tensor:
        cache, token = state
        return decode_n_tokens(self.model, cache, token, n, timer)


@register
class Transformers(Runtime):
    name = DEFAULT
    description = "the model's own eager forward in this process, one call per token, a DynamicCache grown per step"

    def open(self, fmt, ckpt, device, guard_ids, shapes=None) -> Opened:
        """The format's library builds the model in this process; the guard's forward is its first, and
        what the format does after it (and the memory it then holds) is recorded."""
        loaded = fmt.open(ckpt, device)
        outputs = guard_outputs(loaded.model, guard_ids.to(device))
        loaded.facts.update(fmt.after_first_forward(loaded.model))
        loaded.facts["weight_bytes_after_first_forward"] = resident_weight_bytes(loaded.model)["total"]
        loaded.facts["device_bytes_after_first_forward"] = current_bytes(device)
        loaded.facts.update(fmt.first_forward_facts(loaded.model))
        if device.type == "cpu":  # what oneDNN ran underneath, outside the timed rounds
            primitives = dispatch.onednn_primitives(lambda: _prefill_and_step(loaded.model, guard_ids[:1].to(device)))
            loaded.facts["onednn"] = primitives
            loaded.facts["kernel"] = dispatch.kernel_words(loaded.facts["kernel"], primitives)
        return Opened(loaded, outputs, self.decoder(loaded.model, device, fmt.dtype))

    def decoder(self, model, device, dtype):
        return EagerDecoder(model)
