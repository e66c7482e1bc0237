"""Lifelong methods, one module each, chosen by `lifelong.method`."""

from lq.methods import ewc, finetune, joint, lifequant, mas, rwalk, scp, si  # noqa: F401  (registration)
from lq.methods.base import Method, TaskContext
from lq.methods.registry import create_method, list_methods

__all__ = ["Method", "TaskContext", "create_method", "list_methods"]
