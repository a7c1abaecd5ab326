"""Fixtures shared by the unit tests."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapfaas.registry.db import Registry

FUNCTION_ARN_PREFIX = "arn:aws:lambda:us-east-1:000000000000:function:"


_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgres"])
def registry_target(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a test's registry lives, once per backend: a fresh SQLite file, or a fresh database
    of the suite's PostgreSQL server (session fixture `postgres`)."""
    if request.param == "sqlite":
        return tmp_path / "state.db"
    postgres = request.getfixturevalue("postgres")
    return str(postgres.create_database(f"unit_registry_{next(_databases)}"))


@pytest.fixture
def reg(registry_target: Path | str) -> Iterator[Registry]:
    """An empty registry (SQLite and PostgreSQL), closed afterwards."""
    registry = Registry(registry_target, FUNCTION_ARN_PREFIX)
    yield registry
    registry.close()
