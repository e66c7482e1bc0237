"""Lifelong methods, one module each, chosen by the `method` grid axis; settings in `lifelong.methods.<name>`."""

from lq.methods import ewc, finetune, joint, lifequant, mas, rwalk, scp, si  # noqa: F401  (registration)
from lq.methods.base import Method, TaskContext
from lq.methods.registry import create_method, list_methods, method_class, method_settings

__all__ = ["Method", "TaskContext", "create_method", "list_methods", "method_class", "method_settings"]
