"""Linear-layer kernels the formats use, on real (K, N) shapes, with a bytes-moved model.

Each kernel computes ``y[M, N] = x[M, K] @ W^T`` for one projection of a model spec. Weights are
random (never zeros), quantized round-to-nearest with each library's own packing, and several
distinct copies are rotated through so the working set exceeds twice the last-level cache: the
benchmark then measures memory traffic, not cache hits.

Bytes moved per call (what the roofline divides by), G = group size:

========================  ====================================================================
kernel                    bytes
========================  ====================================================================
dense fp16/bf16           2KN (W) + 2MK (x) + 2MN (y)
awq-gemm (awq_ext/triton) KN/2 (qweight) + KN/(2G) (qzeros) + 2KN/G (scales) + 2MK + 2MN
awq-gemm naive / dequant  the above + 4KN: the fp16 weight is written, then read by the matmul
awq-hf-* (gptqmodel)      as awq-gemm (awq-hf-gemv as awq-gemv): the checkpoint's bytes, whatever
                          layout the kernel repacks them into at load (Marlin, Machete, ATen int4pack)
awq-hf-torch              as awq-gemm naive: gptqmodel's torch kernel dequantizes every call
awq-gemv                  KN/2 + N*Z*8*2 (fp16 scales) + N*Z*4 (int32 zeros) + 2MK + 2MN, with
                          Z = ceil(ceil(K/G)/8) (AutoAWQ's calculate_zeros_width)
ct-w4a16 (dequant+mm)     KN/2 (weight_packed) + 2KN/G (weight_scale) + 4KN (dense fp16
                          written, read) + 2MK + 2MN
fp8 scaled_mm             KN (fp8 W) + 4 (its fp32 scale) + 2MK (x read) + MK + 4 (fp8 x and
                          its scale written) + 2MN
vllm-int8-scaled-mm       KN (int8 W) + 4N (fp32 channel scales) + 2MK (x read) + MK + 4M (int8 x
                          and its per-token scales written) + 2MN
========================  ====================================================================

Activation quantization of fp8 reads x in fp16 and writes it in fp8, hence 2MK + MK.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch

GROUP = 128


# ----------------------------------------------------------------------------- bytes model
def awq_gemv_zeros_width(k: int, group: int = GROUP) -> int:
    """AutoAWQ's calculate_zeros_width: int32 words of zeros per row (groups packed 8 per word,
    padded: ceil(ceil(K/G) / 8))."""
    return math.ceil(math.ceil(k / group) / 8)


def awq_gemm_weight_bytes(k: int, n: int, group: int = GROUP) -> int:
    """qweight (int4) + qzeros (int4 packed in int32) + fp16 scales."""
    return k * n // 2 + (k // group) * (n // 8) * 4 + (k // group) * n * 2


def awq_gemv_weight_bytes(k: int, n: int, group: int = GROUP) -> int:
    width = awq_gemv_zeros_width(k, group)
    return k * n // 2 + n * width * 8 * 2 + n * width * 4


def weight_bytes(kernel: str, k: int, n: int, group: int = GROUP) -> int:
    """Bytes of one copy of the kernel's weights as stored (what must come from memory each call)."""
    return KERNELS[kernel].weight_bytes(k, n, group)


def bytes_moved(kernel: str, m: int, k: int, n: int, group: int = GROUP) -> int:
    """Bytes a kernel reads and writes for one call (see the module docstring for the model)."""
    return KERNELS[kernel].bytes_moved(m, k, n, group)


def flops(m: int, k: int, n: int) -> int:
    return 2 * m * n * k


# ----------------------------------------------------------------------------- kernels
@dataclass
class Prepared:
    """Weight copies for one (kernel, K, N) and the callables that use one copy."""
    copies: list
    call: object            # call(x, copy) -> y
    reference_weight: torch.Tensor  # fp32 [N, K] the kernel's weights dequantize to
    weight_bytes: int       # bytes of one copy as actually allocated
    path: str


class Kernel:
    """One linear kernel: what it cannot run on, its weights, and its bytes-moved model."""

    name = ""
    bits: int | None = None        # weight bits; None = 16-bit dense (the crossover compares bits 4 with it)
    display_order: int = 99
    dequantizes_per_call = False   # writes the dense fp16 weight, then reads it in the matmul
    rel_tolerance: float | None = None  # a kernel that also rounds x (fp8, int8) sets its own bound

    def record_fields(self) -> dict:
        """What every case of this kernel records about it (as Format.record_fields)."""
        return {"bits": self.bits, "display_order": self.display_order}

    def weight_bytes(self, k: int, n: int, group: int = GROUP) -> int:
        """Bytes of one copy of the weights as stored (what must come from memory each call)."""
        return 2 * k * n

    def bytes_moved(self, m: int, k: int, n: int, group: int = GROUP) -> int:
        """Weights + activations in (2MK) + output (2MN), + 4KN for a dequantizing kernel."""
        moved = self.weight_bytes(k, n, group) + 2 * m * k + 2 * m * n
        return moved + 4 * k * n * self.dequantizes_per_call
    dtype = torch.float16

    def unsupported_reason(self, device: torch.device) -> str | None:
        return None

    def prepare(self, k: int, n: int, device: torch.device, copies: int, seed: int = 0) -> Prepared:
        raise NotImplementedError


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            return next((set(line.split(":", 1)[1].split()) for line in fh if line.startswith("flags")), set())
    except OSError:
        return set()


def _random_weight(k: int, n: int, device, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=gen) * 0.02).to(torch.float16).to(device)


def ops_seen(call, x, copy, keep) -> str:
    """The torch ops one ``call(x, copy)`` dispatched to whose names ``keep`` accepts, first-seen order: the
    kernel of a library whose module or tensor subclass names none (bitsandbytes, torchao)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call(x, copy)
    return ", ".join(dict.fromkeys(e.name for e in prof.events() if keep(e.name)))


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


class Dense(Kernel):
    def __init__(self, dtype):
        self.dtype = dtype
        self.name = "torch-" + ("bf16" if dtype == torch.bfloat16 else "fp16")

    def prepare(self, k, n, device, copies, seed=0):
        w = _random_weight(k, n, device, seed).to(self.dtype)
        ws = [w] + [w.clone() for _ in range(copies - 1)]
        return Prepared(ws, lambda x, w: torch.nn.functional.linear(x, w), w.float(), _nbytes(w),
                        f"torch.nn.functional.linear[{str(self.dtype)[6:]}]")


@contextmanager
def awq_gemm_path(path: str):
    """Force WQLinear_GEMM's forward down one path (awq_ext, triton or naive) for the duration."""
    from awq.modules.linear import gemm
    saved = gemm.awq_ext, gemm.TRITON_AVAILABLE
    try:
        if path != "awq_ext":
            gemm.awq_ext = None
        gemm.TRITON_AVAILABLE = path == "triton" and saved[1]
        yield
    finally:
        gemm.awq_ext, gemm.TRITON_AVAILABLE = saved


def _awq_modules(version: str, k: int, n: int, device, copies: int, seed: int):
    """AutoAWQ's own RTN (pseudo_quantize_tensor) packed by its own WQLinear_*.from_linear."""
    from types import SimpleNamespace

    from awq.modules.linear import WQLinear_GEMM, WQLinear_GEMV
    from awq.quantize.quantizer import AwqQuantizer

    w = _random_weight(k, n, "cpu", seed)
    linear = torch.nn.Linear(k, n, bias=False, dtype=torch.float16)
    fake, scales, zeros = AwqQuantizer.pseudo_quantize_tensor(SimpleNamespace(group_size=GROUP, w_bit=4,
                                                                              zero_point=True), w)
    linear.weight.data = fake
    if version == "gemm":
        module = WQLinear_GEMM.from_linear(linear, 4, GROUP, scales=scales.t().contiguous(),
                                           zeros=zeros.t().contiguous())
    else:
        module = WQLinear_GEMV.from_linear(linear, 4, GROUP, scales=scales, zeros=zeros)
    module = module.to(device).eval()
    mods = [module] + [_clone_module(module) for _ in range(copies - 1)]
    return mods, fake.float().to(device)


def _clone_module(module):
    import copy
    clone = copy.copy(module)
    clone._buffers = {name: (b.clone() if b is not None else None) for name, b in module._buffers.items()}
    return clone


class AWQGemm(Kernel):
    bits = 4

    def __init__(self, path):
        self.path = path
        self.name = f"awq-gemm-{path}"
        self.dequantizes_per_call = path == "naive"

    def weight_bytes(self, k, n, group=GROUP):
        return awq_gemm_weight_bytes(k, n, group)

    def unsupported_reason(self, device):
        from awq.modules.linear import gemm
        if self.path == "naive":
            return None
        if device.type != "cuda":
            return f"AutoAWQ's {self.path} GEMM path needs CUDA"
        if self.path == "awq_ext" and gemm.awq_ext is None:
            return "awq_ext (autoawq-kernels) does not import here"
        if self.path == "triton" and not gemm.TRITON_AVAILABLE:
            return "Triton is not installed or AutoAWQ's Triton kernels did not import"
        return None

    def prepare(self, k, n, device, copies, seed=0):
        mods, ref = _awq_modules("gemm", k, n, device, copies, seed)
        path = self.path

        def call(x, mod):
            # [1, M, K] as the model passes it: AutoAWQ's switch is x.shape[0] * x.shape[1] >= 1024 (tokens
            # for a [B, T, K] input); a 2-D [M, K] reads it as M * K and always took dequantize + matmul
            with awq_gemm_path(path):
                return mod(x.unsqueeze(0)).squeeze(0)
        return Prepared(mods, call, ref, _nbytes(*mods[0]._buffers.values()),
                        {"naive": "awq dequantize_gemm + torch.matmul", "awq_ext": "awq_ext.gemm_forward_cuda",
                         "triton": "awq_gemm_triton"}[path]
                        + " below 1024 tokens, dequantize + matmul from 1024 ([1, M, K] input)" * (path != "naive"))


class AWQGemv(Kernel):
    name = "awq-gemv"
    bits = 4

    def weight_bytes(self, k, n, group=GROUP):
        return awq_gemv_weight_bytes(k, n, group)

    def unsupported_reason(self, device):
        from awq.modules.linear import gemv
        if device.type != "cuda" or gemv.awq_ext is None:
            return "WQLinear_GEMV needs AutoAWQ's awq_ext CUDA extension"
        return None

    def prepare(self, k, n, device, copies, seed=0):
        mods, ref = _awq_modules("gemv", k, n, device, copies, seed)
        return Prepared(mods, lambda x, mod: mod(x), ref, _nbytes(*mods[0]._buffers.values()),
                        "awq_ext.gemv_forward_cuda")


class GptqAWQ(Kernel):
    """An AWQ-packed weight (AutoAWQ's own packing, as in a checkpoint) run by one of gptqmodel's
    QuantLinear kernels, built the way transformers 5.x builds them: the class gptqmodel selects
    for the backend, the checkpoint's buffers copied in, then ``post_init`` (where Marlin, Machete
    and the ATen kernel repack)."""
    bits = 4

    def __init__(self, short: str, backend: str, version: str = "gemm"):
        self.name, self.backend, self.version = f"awq-hf-{short}", backend, version
        self.dequantizes_per_call = short == "torch"  # gptqmodel's torch kernel dequantizes every call

    def weight_bytes(self, k, n, group=GROUP):
        """The checkpoint's bytes, whatever layout the kernel repacks them into at load."""
        return (awq_gemv_weight_bytes if self.version == "gemv" else awq_gemm_weight_bytes)(k, n, group)

    def unsupported_reason(self, device):
        from ..errors import Unsupported
        from ..formats.gptqmodel import gptqmodel_available, selected_awq_linear
        if not gptqmodel_available():
            return "gptqmodel is not installed (the current stack's extra has it)"
        try:
            selected_awq_linear(self.backend, self.version, device)  # builds gptqmodel's CUDA extension
        except Unsupported as exc:
            return str(exc)
        return None

    def prepare(self, k, n, device, copies, seed=0):
        from ..formats.gptqmodel import selected_awq_linear
        cls = selected_awq_linear(self.backend, self.version, device)[0]
        (source,), ref = _awq_modules(self.version, k, n, "cpu", 1, seed)
        buffers = {name: source._buffers[name] for name in ("qweight", "qzeros", "scales")}
        return gptqmodel_prepared(cls, buffers, ref, k, n, device, copies, self.dtype, sym=False)


def post_init(mod, device) -> None:
    """gptqmodel's ``post_init`` as its own model loader calls it (utils/model.py gptqmodel_post_init): ExLlamaV2's
    takes the ScratchSpace its dequantize and forward write into, sized by the module's own
    ``scratch_space_fixed`` (2048 rows x batch 8 by default, more than any kernel-suite M)."""
    import inspect
    if "scratch_space" not in inspect.signature(mod.post_init).parameters:
        mod.post_init()
        return
    from gptqmodel.utils.exllamav2 import ScratchSpace
    mod.post_init(scratch_space=ScratchSpace(scratch_bytes=mod.scratch_space_fixed(), dev=device))


def gptqmodel_prepared(cls, buffers: dict, ref: torch.Tensor, k: int, n: int, device, copies: int, dtype,
                       sym: bool) -> Prepared:
    """``copies`` modules of a gptqmodel QuantLinear class holding the same packed ``buffers`` (as transformers
    builds them: construct, copy the checkpoint's tensors, post_init), ready to time."""
    from ..formats.gptqmodel import KERNEL_WORDS
    mods = []
    for _ in range(copies):
        mod = cls(bits=4, group_size=GROUP, sym=sym, desc_act=False, in_features=k, out_features=n,
                  bias=False, register_buffers=True).to(device)
        with torch.no_grad():
            for name, tensor in buffers.items():
                getattr(mod, name).copy_(tensor)
        post_init(mod, device)
        mods.append(mod.eval())
    # Some kernels repack on their first call (the ATen CPU kernel converts to int4pack there):
    # one call per copy here, so no timed call pays it (seen: 150 ms instead of 5 ms per call).
    warm = torch.randn(1, k, dtype=dtype, device=device)
    with torch.no_grad():
        for mod in mods:
            mod(warm)

    def call(x, mod):
        with torch.no_grad():
            return mod(x)
    held = [*mods[0].buffers(), *mods[0].parameters()]
    return Prepared(mods, call, ref.to(device), _nbytes(*held),
                    f"gptqmodel {cls.__name__}: {KERNEL_WORDS.get(cls.__name__, 'gptqmodel kernel')}")


class CTW4A16(Kernel):
    """compressed-tensors W4A16 as its decompressor runs it: unpack int32 -> dequantize -> matmul."""
    name = "ct-w4a16"
    bits = 4
    dequantizes_per_call = True

    def weight_bytes(self, k, n, group=GROUP):
        return k * n // 2 + 2 * n * (k // group)

    def prepare(self, k, n, device, copies, seed=0):
        from compressed_tensors.compressors import pack_to_int32, unpack_from_int32
        from compressed_tensors.quantization import preset_name_to_scheme
        from compressed_tensors.quantization.lifecycle.forward import dequantize, quantize
        from compressed_tensors.quantization.utils import calculate_qparams

        args = preset_name_to_scheme("W4A16", ["Linear"]).weights
        w = _random_weight(k, n, "cpu", seed).float()
        grouped = w.reshape(n, -1, GROUP)
        scale, zero = calculate_qparams(grouped.amin(-1), grouped.amax(-1), args)
        scale = scale.to(torch.float16)
        q = quantize(w, scale, zero, args, dtype=torch.int8)
        ref = dequantize(q, scale, zero, args, dtype=torch.float32)
        packed = pack_to_int32(q, 4)
        copies_ = [(packed.to(device), scale.to(device))]
        copies_ += [(p.clone(), s.clone()) for p, s in [copies_[0]] * (copies - 1)]
        shape = torch.Size([n, k])

        def call(x, copy):
            packed_w, s = copy
            weight = dequantize(unpack_from_int32(packed_w, 4, shape), s, None, args, dtype=torch.float16)
            return torch.nn.functional.linear(x, weight)
        return Prepared(copies_, call, ref.to(device), _nbytes(*copies_[0]),
                        "compressed_tensors unpack_from_int32 + dequantize + torch.matmul")


class FP8ScaledMM(Kernel):
    name = "fp8-scaled-mm"
    bits = 8
    rel_tolerance = 0.08  # x is rounded to fp8 (3 mantissa bits) too

    def weight_bytes(self, k, n, group=GROUP):
        return k * n + 4  # fp8 weight and its fp32 scale

    def bytes_moved(self, m, k, n, group=GROUP):
        return super().bytes_moved(m, k, n, group) + m * k + 4  # x is re-written in fp8, plus its scale

    def unsupported_reason(self, device):
        if device.type != "cuda":
            return "torch._scaled_mm (FP8) needs a CUDA GPU of compute capability >= 8.9"
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            return f"FP8 scaled_mm needs compute capability >= 8.9 (this GPU: {major}.{minor})"
        return None

    def prepare(self, k, n, device, copies, seed=0):
        w = _random_weight(k, n, device, seed).float()
        w_scale = (w.abs().max() / 448.0).reshape(1).float()
        w8 = (w / w_scale).to(torch.float8_e4m3fn)
        ref = w8.float() * w_scale
        ws = [(w8.t(), w_scale)] + [(w8.clone().t(), w_scale.clone()) for _ in range(copies - 1)]

        def call(x, copy):
            wt, ws_ = copy
            x_scale = (x.abs().max().float() / 448.0).reshape(1).clamp(min=1e-12)
            x8 = (x.float() / x_scale).to(torch.float8_e4m3fn)
            return torch._scaled_mm(x8, wt, scale_a=x_scale, scale_b=ws_, out_dtype=torch.float16)
        return Prepared(ws, call, ref, _nbytes(w8, w_scale), "torch._scaled_mm e4m3 (per-tensor scales)")


class VllmInt8ScaledMM(Kernel):
    """vLLM's W8A8 int8 linear through its own ops, as its kernels call them: dynamic per-token int8
    activations, per-channel int8 weights. CPU: CPUInt8ScaledMMLinearKernel's oneDNN path
    (create_onednn_scaled_mm + onednn_scaled_int8_quant + onednn_scaled_mm); CUDA: its CUTLASS
    scaled-mm (scaled_int8_quant + cutlass_scaled_mm)."""

    name = "vllm-int8-scaled-mm"
    bits = 8
    rel_tolerance = 0.03  # x is rounded to int8 per token: ~1/127 of its largest element

    def weight_bytes(self, k, n, group=GROUP):
        return k * n + 4 * n

    def bytes_moved(self, m, k, n, group=GROUP):
        return super().bytes_moved(m, k, n, group) + m * k + 4 * m

    def unsupported_reason(self, device):
        import importlib.util
        if importlib.util.find_spec("vllm") is None:
            return "vLLM is not installed here (the vllm stack has it)"
        from vllm.platforms import current_platform
        if current_platform.device_type != device.type:
            return f"this vLLM build runs on {current_platform.device_type}, not {device.type}"
        if device.type == "cpu" and not {"avx512_vnni", "avx_vnni", "amx_int8"} & _cpu_flags():
            # Measured on an AVX2 AMD EPYC (K=256, N=768): max rel err 0.13-0.20 with full-range int8
            # weights, 0.0003 with 7-bit ones, so a wrong result, never a timing.
            return ("vLLM's oneDNN int8 GEMM on a CPU without VNNI (AVX2 only here) sums u8 x s8 pairs in int16 "
                    "and saturates: max rel err 0.13-0.20 vs fp32 with full-range int8 weights")
        return None

    def prepare(self, k, n, device, copies, seed=0):
        from vllm import _custom_ops as ops
        w = _random_weight(k, n, device, seed).float()
        scale = (w.abs().amax(dim=1, keepdim=True) / 127.0).clamp(min=1e-12)  # [N, 1]
        q = torch.round(w / scale).clamp(-128, 127).to(torch.int8)
        ref = q.float() * scale
        if device.type == "cuda":
            # As vLLM's CUTLASS int8 kernel holds them: w [K, N] column-major, channel scales [N, 1] (untested
            # here: no GPU was lent while this was written).
            ws = [(q.t(), scale)] + [(q.clone().t(), scale.clone()) for _ in range(copies - 1)]

            def call(x, copy):
                x_q, x_s, _ = ops.scaled_int8_quant(x, symmetric=True)
                return ops.cutlass_scaled_mm(x_q, copy[0], x_s, copy[1], out_dtype=x.dtype)
            return Prepared(ws, call, ref, _nbytes(q, scale), "vllm cutlass_scaled_mm int8 (dynamic per-token x)")
        # [K, N] as a transposed view of [N, K], as vLLM hands it to oneDNN (which packs its own copy)
        # The handler keeps a pointer to the scales (vLLM keeps them as a layer parameter): held with it.
        scales = [scale.clone() for _ in range(copies)]
        ws = [(ops.create_onednn_scaled_mm(q.clone().t(), s, torch.float16, True, False, 32), s) for s in scales]

        def call(x, copy):
            handler = copy[0]
            x_q, x_s, x_zp = ops.onednn_scaled_int8_quant(x, None, None, True)
            out = torch.empty((x.shape[0], handler.n), dtype=x.dtype)
            ops.onednn_scaled_mm(handler, x_q, out, x_s, x_zp, None, None)  # symmetric x: no zero-point term
            return out
        return Prepared(ws, call, ref, _nbytes(q, scale), "vllm onednn_scaled_mm int8 (dynamic per-token x)")


KERNELS: dict[str, Kernel] = {}


def register(*kernels: Kernel) -> None:
    """Add kernels to the suite; registry order is the guide's order and color. A format family's
    kernels live in its own module of this package (gptq, bitsandbytes, torchao) and register there."""
    for kernel in kernels:
        if kernel.name in KERNELS:
            raise RuntimeError(f"kernel {kernel.name!r} registered twice")
        kernel.display_order = len(KERNELS)
        KERNELS[kernel.name] = kernel


register(Dense(torch.bfloat16), Dense(torch.float16), AWQGemm("awq_ext"), AWQGemm("triton"), AWQGemm("naive"),
         AWQGemv(), CTW4A16(), FP8ScaledMM(),
         # The same AWQ weights through gptqmodel's kernels (transformers 5.x's AWQ runtime).
         GptqAWQ("aten", "awq_torch_aten"), GptqAWQ("torch", "awq_torch"), GptqAWQ("gemm", "awq_gemm"),
         GptqAWQ("gemv", "awq_gemv", version="gemv"), GptqAWQ("triton", "awq_gemm_triton"),
         GptqAWQ("marlin", "awq_marlin"), GptqAWQ("machete", "awq_machete"),
         # vLLM's own linear kernels (the vllm stack)
         VllmInt8ScaledMM())
DENSE_BASELINE = "torch-fp16"


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max |ref|: scale-free, safe for near-zero elements."""
    return ((got.float() - ref).abs().max() / ref.abs().max().clamp(min=1e-12)).item()


def tolerance(kernel: Kernel) -> float:
    """Bound on rel_err vs fp32 math on the kernel's own dequantized weights: what fp16/bf16
    rounding of inputs, weights and accumulation allows (fp8 also rounds x to 3 mantissa bits)."""
    if kernel.rel_tolerance is not None:
        return kernel.rel_tolerance
    return 0.02 if kernel.dtype == torch.bfloat16 else 0.01
