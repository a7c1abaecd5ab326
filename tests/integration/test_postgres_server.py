"""The suite's private PostgreSQL server and the database layer against it: connect, outage
turns into ServiceUnavailable (no hang), and the pool reconnects after a restart."""

from __future__ import annotations

import pytest
import sqlalchemy

from snapfaas.database import open_engine, unavailable
from snapfaas.errors import ServiceUnavailable


def test_engine_survives_a_server_restart(postgres) -> None:  # type: ignore[no-untyped-def]
    engine = open_engine(postgres.create_database("db_layer"))
    with unavailable("first query"), engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
    postgres.stop("fast")
    try:
        with pytest.raises(ServiceUnavailable, match="failed at step 'during outage'"):
            with unavailable("during outage"), engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT 1"))
    finally:
        postgres.start()
    with unavailable("after restart"), engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT 2")).scalar() == 2
    engine.dispose()


def test_sqlite_engine_is_the_embedded_default(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = open_engine(tmp_path / "state.db")
    with engine.begin() as conn:
        assert conn.execute(sqlalchemy.text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(sqlalchemy.text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()
