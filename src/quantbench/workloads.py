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


@torch.inference_mode()
def logits(model, ids: torch.Tensor) -> torch.Tensor:
    """Full logits of a short fixed prompt, as float32 on the CPU (for the correctness guard)."""
    return model(input_ids=ids, use_cache=False).logits.float().cpu()
