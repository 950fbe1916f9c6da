"""torchao's linear kernels: the tensor-subclass weights its configs make, on a plain nn.Linear.
int8 dynamic activation x int8 weight dispatches to ``aten::_int_mm``; int4 weight-only to tinygemm
on CUDA and, on a CPU, to ``_weight_int4pack_mm_for_cpu`` through torchao's prototype config (which
cannot be saved, so the format states it; the kernel needs no checkpoint).

Bytes: int8da8w KN + 4N (fp32 row scales) + N (zero points) + MK + 4M (x rounded to int8 per row);
int4wo KN/2 + 4KN/G (bf16 scale and zero per group).
"""

from __future__ import annotations

import torch

from .ops import GROUP, Kernel, Prepared, _nbytes, _random_weight, ops_seen, register


class TorchAOKernel(Kernel):
    bits: int
    dtype = torch.bfloat16

    def __init__(self, kind: str, bits: int):
        self.kind, self.bits, self.name = kind, bits, kind
        self.rel_tolerance = 0.03 if bits == 8 else None  # int8 activations

    def weight_bytes(self, k, n, group=GROUP):
        return k * n + 5 * n if self.bits == 8 else k * n // 2 + 4 * (k // group) * n

    def bytes_moved(self, m, k, n, group=GROUP):
        return super().bytes_moved(m, k, n, group) + (m * k + 4 * m) * (self.bits == 8)

    def unsupported_reason(self, device):
        from ..formats.torchao import torchao_missing
        return torchao_missing(device, self.kind, saved=False)

    def prepare(self, k, n, device, copies, seed=0):
        from torchao.quantization import quantize_

        from ..formats.torchao import dequantized_weight, quant_config
        from ..measure import storage_tensors
        w = _random_weight(k, n, device, seed).to(torch.bfloat16)
        mods = []
        for _ in range(copies):
            mod = torch.nn.Linear(k, n, bias=False, dtype=torch.bfloat16, device=device)
            mod.weight.data.copy_(w)
            quantize_(mod, quant_config(self.kind, device, saved=False))
            mods.append(mod.eval())
        ref = dequantized_weight(mods[0].weight, w)

        def call(x, mod):
            with torch.no_grad():
                return mod(x)
        x = torch.randn(1, k, dtype=self.dtype, device=device)
        call(x, mods[0])  # a first call may repack: not the op to name
        ran = ops_seen(call, x, mods[0], lambda name: "mm" in name or "quant" in name)
        return Prepared(mods, call, ref, _nbytes(*storage_tensors(mods[0].weight)),
                        f"torchao {type(mods[0].weight).__name__} -> {ran or 'no mm op seen'} (at M=1)")


register(TorchAOKernel("torchao-int8da8w", 8), TorchAOKernel("torchao-int4wo", 4))
