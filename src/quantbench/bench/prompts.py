"""Fixed token-id prompts: no tokenizer in the timed path, never zeros, never special tokens."""

from __future__ import annotations

import torch

FIRST_REAL_TOKEN = 4  # ids below are special tokens of the synthetic tokenizer


def prompt_ids(batch: int, length: int, vocab_size: int, device, seed: int = 1234) -> torch.Tensor:
    """Deterministic random prompt: never zeros, never special tokens."""
    gen = torch.Generator().manual_seed(seed + 7919 * batch + length)
    high = max(FIRST_REAL_TOKEN + 1, min(vocab_size, 32000) - 1)
    return torch.randint(FIRST_REAL_TOKEN, high, (batch, length), generator=gen).to(device)
