"""The forward the correctness guard compares: run once on every loaded checkpoint, and by the
builders to store each checkpoint's own reference."""

from __future__ import annotations

import torch

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


def dequantized_reference(dense_dir, weights: dict, ids: torch.Tensor, device, others: dict | None = None) -> dict:
    """The guard's outputs of the dense model with each named Linear's weight replaced by the quantized
    weight as its library dequantizes it (``weights``: module name -> [out, in] tensor), in fp32: the
    fake-quant reference of a format whose library has no quantize-dequantize forward of its own. A kernel
    that runs those weights must match it (bench.guard's cosine_vs_fakequant)."""
    from transformers import AutoModelForCausalLM

    from .base import dtype_kwargs
    model = AutoModelForCausalLM.from_pretrained(str(dense_dir), device_map={"": str(device)},
                                                 **dtype_kwargs(torch.float32)).eval()
    if others:  # tensors the quantizer changed besides the linears (AWQ folds its scales into the norms)
        state = model.state_dict()
        for name, tensor in others.items():
            if name in state and tuple(state[name].shape) == tuple(tensor.shape):
                state[name].copy_(tensor.to(torch.float32))
    for name, weight in weights.items():
        linear = model.get_submodule(name)
        if tuple(weight.shape) != tuple(linear.weight.shape):
            raise ValueError(f"{name}: dequantized weight {tuple(weight.shape)} is not {tuple(linear.weight.shape)}")
        linear.weight.data = weight.to(device=linear.weight.device, dtype=torch.float32)
    return guard_outputs(model, ids.to(device))
