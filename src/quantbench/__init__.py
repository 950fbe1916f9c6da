"""quantbench: a pytest-benchmark regression suite for quantized LLM inference."""

__version__ = "0.1.0"
