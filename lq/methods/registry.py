"""Method registry: `create_method(name, settings)`; adding a method is one file and one decorator."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from lq.errors import LqError

_METHODS: dict[str, type] = {}


def register_method(cls: type) -> type:
    _METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    return sorted(_METHODS)


def method_settings(name: str) -> list[str]:
    """The settings a method takes: its constructor's keyword arguments (its params block's keys)."""
    return [p.name for p in inspect.signature(method_class(name).__init__).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY]


def method_class(name: str) -> type:
    if name not in _METHODS:
        raise LqError(f"lifelong method {name!r} is unknown; registered methods: {', '.join(list_methods())}")
    return _METHODS[name]


def create_method(name: str, settings: Mapping[str, Any] | None = None):
    """The method `name` built from its params block; unknown or missing settings are errors."""
    settings = dict(settings or {})
    wanted = method_settings(name)
    unknown, missing = sorted(set(settings) - set(wanted)), [k for k in wanted if k not in settings]
    if unknown or missing:
        problems = ([f"unknown setting(s) {', '.join(unknown)}"] if unknown else []) + (
            [f"missing setting(s) {', '.join(missing)}"] if missing else [])
        raise LqError(f"lifelong.methods.{name}: {'; '.join(problems)}; "
                      f"it takes exactly: {', '.join(wanted) or 'nothing'}")
    return _METHODS[name](**settings)
