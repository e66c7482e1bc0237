"""lq: a declarative, data-versioned pipeline for quantization-aware lifelong learning."""

__version__ = "0.1.0"
