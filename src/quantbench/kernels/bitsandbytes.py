"""bitsandbytes' linear kernels: nf4 (block 64, fp32 absmax) through ``bnb.matmul_4bit`` with bf16
activations (its CPU 4-bit kernel takes bf16 only), and LLM.int8 through ``Linear8bitLt``.

Bytes: nf4 KN/2 + 4KN/64 (fp32 absmax per block of 64); int8 KN + 4N (fp32 row
scales, SCB) + MK (x rounded to int8) + 4M.
"""

from __future__ import annotations

import torch

from .ops import GROUP, Kernel, Prepared, _nbytes, _random_weight, ops_seen, register

NF4_BLOCK = 64


def _missing(device) -> str | None:
    from ..formats.bitsandbytes import bnb_missing
    return bnb_missing(device)


def _bnb_ops(call, x, copy) -> str:
    return ops_seen(call, x, copy, lambda name: name.startswith("bitsandbytes::"))


class BnbNF4(Kernel):
    name = "bnb-nf4"
    bits = 4
    dtype = torch.bfloat16

    def weight_bytes(self, k, n, group=GROUP):
        return k * n // 2 + 4 * (k * n // NF4_BLOCK)

    def unsupported_reason(self, device):
        return _missing(device)

    def prepare(self, k, n, device, copies, seed=0):
        import bitsandbytes as bnb
        from bitsandbytes.functional import dequantize_4bit, quantize_4bit
        w = _random_weight(k, n, device, seed).to(torch.bfloat16)
        copies_ = [quantize_4bit(w.clone(), blocksize=NF4_BLOCK, quant_type="nf4") for _ in range(copies)]
        ref = dequantize_4bit(*copies_[0]).float()

        def call(x, copy):
            packed, state = copy
            with torch.no_grad():
                return bnb.matmul_4bit(x, packed.t(), quant_state=state)
        ran = _bnb_ops(call, torch.randn(1, k, dtype=self.dtype, device=device), copies_[0])
        return Prepared(copies_, call, ref, _nbytes(copies_[0][0], copies_[0][1].absmax),
                        f"bnb.matmul_4bit nf4 -> {ran or 'no bitsandbytes op'} (at M=1)")


class BnbInt8(Kernel):
    name = "bnb-int8"
    bits = 8
    rel_tolerance = 0.03  # x is rounded to int8 per row too

    def weight_bytes(self, k, n, group=GROUP):
        return k * n + 4 * n  # SCB: one fp32 absmax per output row

    def bytes_moved(self, m, k, n, group=GROUP):
        return super().bytes_moved(m, k, n, group) + m * k + 4 * m

    def unsupported_reason(self, device):
        return _missing(device)

    def prepare(self, k, n, device, copies, seed=0):
        import bitsandbytes as bnb
        w = _random_weight(k, n, "cpu", seed)
        mods = []
        for _ in range(copies):
            mod = bnb.nn.Linear8bitLt(k, n, bias=False, has_fp16_weights=False, threshold=6.0)
            mod.weight = bnb.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False)
            mods.append(mod.to(device).eval())  # quantizes to int8 rows on the move
        scb = mods[0].weight.SCB  # the first forward moves it into the module's state
        ref = mods[0].weight.data.float() * scb.float().unsqueeze(1) / 127.0

        def call(x, mod):
            with torch.no_grad():
                return mod(x)
        ran = _bnb_ops(call, torch.randn(1, k, dtype=self.dtype, device=device), mods[0])
        return Prepared(mods, call, ref, _nbytes(mods[0].weight.data, scb),
                        f"bitsandbytes Linear8bitLt (threshold 6.0) -> {ran or 'no bitsandbytes op'}")


register(BnbNF4(), BnbInt8())
