"""GPTQ's linear kernels: a symmetric int4 weight (group 128, no act order) packed by gptqmodel's own
``pack``, run by each QuantLinear class gptqmodel selects for a backend, as transformers builds them.

Bytes: as awq-gemm's (qweight KN/2, qzeros, fp16 scales) plus g_idx (4K, int32); gptq-torch dequantizes
every call (+4KN, as awq-hf-torch).
"""

from __future__ import annotations

import torch

from .ops import GROUP, Kernel, _random_weight, awq_gemm_weight_bytes, gptqmodel_prepared, register


def rtn_symmetric(w: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest symmetric int4 per group of ``group`` inputs, as GPTQ (sym=True) stores it:
    -> (dequantized fp32 [N, K], scales [N, K/G], zero points [N, K/G] (all 8))."""
    n, k = w.shape
    grouped = w.float().reshape(n, k // group, group)
    scales = (grouped.abs().amax(-1) / 7.5).clamp(min=1e-8)  # [-8, 7] around 8: the symmetric grid
    zeros = torch.full_like(scales, 8.0)
    q = torch.clamp(torch.round(grouped / scales.unsqueeze(-1)) + 8, 0, 15)
    return ((q - 8) * scales.unsqueeze(-1)).reshape(n, k), scales, zeros


class GptqKernel(Kernel):
    bits = 4

    def __init__(self, short: str, backend: str):
        self.name, self.backend = f"gptq-{short}", backend
        self.dequantizes_per_call = short == "torch"

    def weight_bytes(self, k, n, group=GROUP):
        return awq_gemm_weight_bytes(k, n, group) + 4 * k

    def unsupported_reason(self, device):
        from ..errors import Unsupported
        from ..formats.gptqmodel import gptqmodel_available, selected_quant_linear
        if not gptqmodel_available():
            return "gptqmodel is not installed (the current stack's extra has it)"
        try:
            selected_quant_linear("gptq", self.backend, "gptq", device, GROUP, False, True)
        except Unsupported as exc:
            return str(exc)
        return None

    def prepare(self, k, n, device, copies, seed=0):
        from gptqmodel.nn_modules.qlinear.torch import TorchLinear

        from ..formats.gptqmodel import selected_quant_linear
        cls = selected_quant_linear("gptq", self.backend, "gptq", device, GROUP, False, True)[0]
        w = _random_weight(k, n, "cpu", seed)
        ref, scales, zeros = rtn_symmetric(w)
        linear = torch.nn.Linear(k, n, bias=False, dtype=torch.float16)
        linear.weight.data = ref.to(torch.float16)
        packed = TorchLinear(bits=4, group_size=GROUP, sym=True, desc_act=False, in_features=k, out_features=n,
                             bias=False, register_buffers=True)
        packed.pack(linear, scales, zeros, torch.arange(k, dtype=torch.int32) // GROUP)
        buffers = {name: getattr(packed, name) for name in ("qweight", "qzeros", "scales", "g_idx")}
        return gptqmodel_prepared(cls, buffers, ref, k, n, device, copies, self.dtype, sym=True)


register(GptqKernel("aten", "gptq_torch_aten"), GptqKernel("torch", "torch"), GptqKernel("torch-fused", "torch_fused"),
         GptqKernel("triton", "triton"), GptqKernel("marlin", "marlin"), GptqKernel("exllamav2", "exllama_v2"),
         GptqKernel("machete", "machete"))
