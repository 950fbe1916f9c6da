"""The linear-layer kernel suite: each kernel's op and bytes-moved model (ops, and one module per
format family that registers its own: gptq, bitsandbytes, torchao)."""

from .ops import (  # noqa: F401, I001  (the families below register after these)
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

# Each format family's kernels register themselves after ops' own (registry order is the guide's order).
from . import gptq, bitsandbytes, torchao  # noqa: F401, E402, I001
