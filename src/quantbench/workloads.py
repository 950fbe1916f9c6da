"""Prefill and decode as small functions (after gpt-fast): greedy, KV-cached, no sampling noise."""

from __future__ import annotations

import torch

FIRST_REAL_TOKEN = 4  # ids below are special tokens of the synthetic tokenizer


def prompt_ids(batch: int, length: int, vocab_size: int, device, seed: int = 1234) -> torch.Tensor:
    """Deterministic random prompt: never zeros, never special tokens."""
    gen = torch.Generator().manual_seed(seed + 7919 * batch + length)
    high = max(FIRST_REAL_TOKEN + 1, min(vocab_size, 32000) - 1)
    return torch.randint(FIRST_REAL_TOKEN, high, (batch, length), generator=gen).to(device)


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


class EagerDecoder:
    """The default runtime: the library's own forward, one call per token, a DynamicCache grown per step."""

    def __init__(self, model):
        self.model = model

    def prepare(self, ids: torch.Tensor, new_tokens: int) -> dict:
        return {"decode_runtime": "eager"}

    def start(self, ids: torch.Tensor, new_tokens: int):
        return prefill(self.model, ids)

    def decode(self, state, n: int, timer=None) -> torch.Tensor:
        cache, token = state
        return decode_n_tokens(self.model, cache, token, n, timer)


GUARD_LAYERS = 2  # depth at which the correctness guard compares hidden states


# no_grad, not inference_mode: the guard's forward is the model's first, where compressed-tensors
# (0.10) materializes dense weights; made under inference_mode they would be inference tensors,
# which torch.compile refuses later ("Inference tensors do not track version counter").
@torch.no_grad()
def guard_outputs(model, ids: torch.Tensor) -> dict:
    """What the correctness guard compares, as float32 on the CPU: the full logits of a short fixed
    prompt, and the hidden state after the first GUARD_LAYERS decoder layers.

    Why both: a random-weight network amplifies any weight error with depth (measured: int4 RTN
    cosine vs fp32 0.966 at 2 layers, 0.58 at 36 layers of the qwen2.5-3b shape; bf16 alone 0.9991
    at 36 layers), so a bound on deep logits says more about the random weights than the kernel.
    Every decoder layer runs the same kernels, so a broken kernel shows at layer 2 already."""
    out = model(input_ids=ids, use_cache=False, output_hidden_states=True)
    states = out.hidden_states or ()  # AutoAWQ's fused model returns none: the guard falls back to logits
    if len(states) < 2:
        return {"logits": out.logits.float().cpu(), "hidden": None, "hidden_layer": None}
    layer = min(GUARD_LAYERS, len(states) - 1)
    return {"logits": out.logits.float().cpu(), "hidden": states[layer].float().cpu(), "hidden_layer": layer}
