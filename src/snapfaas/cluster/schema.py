"""The cluster's tables in the shared database (SQLAlchemy Core; created idempotently).

* ``nodes``: one row per running node, rewritten by its heartbeat (`membership`).
* ``cluster_secrets``: values every node must agree on, written once by the first node
  (``INSERT ... ON CONFLICT DO NOTHING``): the cluster key that signs forwarded invokes and
  the fingerprint of the snapshot store's secret.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Integer, MetaData, String, Table, Text

metadata = MetaData()

nodes = Table(
    "nodes", metadata,
    Column("node_id", String(63), primary_key=True),
    Column("advertise_url", Text, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),  # the database's clock, never the node's
    Column("busy", Integer, nullable=False, default=0),
    Column("idle", Integer, nullable=False, default=0),
    Column("capacity", Integer, nullable=False, default=0),
    Column("inflight", Integer, nullable=False, default=0),
    Column("cached_bytes", BigInteger, nullable=False, default=0),
    Column("draining", Boolean, nullable=False, default=False),
)

cluster_secrets = Table(
    "cluster_secrets", metadata,
    Column("name", String(63), primary_key=True),
    Column("value", Text, nullable=False),
)

CLUSTER_KEY = "cluster-key"  # hex of 32 random bytes: HMAC key of forwarded invokes
STORE_FINGERPRINT = "store-secret-fingerprint"  # see membership.store_fingerprint
