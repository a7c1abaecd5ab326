"""Nodes starting together on one fresh PostgreSQL database create the cluster's tables once
(snapfaas.database.create_tables): without the advisory lock the losers of the race failed with
"relation ... already exists" and the node did not start (seen in a CI run)."""

from __future__ import annotations

import concurrent.futures
import threading

import sqlalchemy

from snapfaas.cluster import schema
from snapfaas.database import create_tables, open_engine

NODES = 6


def test_nodes_creating_the_tables_together_all_succeed(postgres) -> None:  # type: ignore[no-untyped-def]
    for attempt in range(5):  # a fresh database each time: every node finds the tables missing
        url = postgres.create_database(f"create_tables_{attempt}")
        engines = [open_engine(url) for _ in range(NODES)]
        start = threading.Barrier(NODES)

        def node(engine: sqlalchemy.Engine) -> None:
            start.wait()
            create_tables(engine, schema.metadata)

        with concurrent.futures.ThreadPoolExecutor(NODES) as pool:
            outcomes = [pool.submit(node, engine) for engine in engines]
        failures = [future.exception() for future in outcomes if future.exception() is not None]
        for engine in engines:
            engine.dispose()
        assert failures == []
        with open_engine(url).connect() as conn:
            present = set(sqlalchemy.inspect(conn).get_table_names())
        assert set(schema.metadata.tables) <= present


def test_sqlite_tables_are_created_in_a_write_transaction(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = open_engine(tmp_path / "state.db")
    create_tables(engine, schema.metadata)
    create_tables(engine, schema.metadata)  # a second time: nothing to do, no error
    with engine.connect() as conn:
        assert set(schema.metadata.tables) <= set(sqlalchemy.inspect(conn).get_table_names())
