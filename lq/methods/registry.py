"""Method registry: `create_method(name, **settings)`; adding a method is one file and one decorator."""

from __future__ import annotations

from typing import Any

from lq.errors import LqError

_METHODS: dict[str, type] = {}


def register_method(cls: type) -> type:
    _METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    return sorted(_METHODS)


def create_method(name: str, **settings: Any):
    if name not in _METHODS:
        raise LqError(f"lifelong.method = {name!r} is unknown; registered methods: {', '.join(list_methods())}")
    return _METHODS[name](**settings)
