"""The linear-layer kernel suite: each kernel's op and bytes-moved model (ops, and one module per
format family that registers its own: gptq, bitsandbytes, torchao)."""

from . import bitsandbytes, gptq, torchao  # noqa: F401  (registration side effects, after ops' own kernels)

from .ops import (  # noqa: F401
    DENSE_BASELINE,
    GROUP,
    KERNELS,
    Kernel,
    Prepared,
    awq_gemm_path,
    bytes_moved,
    flops,
    rel_err,
    tolerance,
    weight_bytes,
)
