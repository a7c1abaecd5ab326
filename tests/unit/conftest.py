"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from snapfaas.registry.db import Registry

FUNCTION_ARN_PREFIX = "arn:aws:lambda:us-east-1:000000000000:function:"


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[Registry]:
    """An empty registry in a fresh SQLite file, closed afterwards."""
    registry = Registry(tmp_path / "state.db", FUNCTION_ARN_PREFIX)
    yield registry
    registry.close()
