"""Fine-tuning: train on each task's pool with plain cross-entropy and no penalty (the baseline)."""

from lq.methods.base import Method
from lq.methods.registry import register_method


@register_method
class FineTune(Method):
    name = "finetune"

    def __init__(self) -> None:
        pass
