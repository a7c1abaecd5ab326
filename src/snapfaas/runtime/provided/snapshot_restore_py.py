"""Runtime hooks for SnapStart, API-compatible with PyPI ``snapshot-restore-py`` 1.0.

Provided by the snapfaas runtime (on ``sys.path`` of every function), as Lambda's managed
Python runtimes provide it. Register callables with `register_before_snapshot` /
`register_after_restore`, either called with arguments or used as decorators. The runtime runs
before-snapshot hooks in reverse registration order and after-restore hooks in registration
order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Hook = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]

_before_snapshot_registry: list[Hook] = []
_after_restore_registry: list[Hook] = []


def register_before_snapshot(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[..., Any]:
    _before_snapshot_registry.append((func, args, kwargs))
    return func


def register_after_restore(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[..., Any]:
    _after_restore_registry.append((func, args, kwargs))
    return func


def get_before_snapshot() -> list[Hook]:
    return _before_snapshot_registry


def get_after_restore() -> list[Hook]:
    return _after_restore_registry
