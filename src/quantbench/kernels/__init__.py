"""The linear-layer kernel suite: each kernel's op and bytes-moved model (ops) and the case runner
(runner)."""

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
