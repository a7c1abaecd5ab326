"""Cluster mode: several `snapfaas serve` nodes sharing one PostgreSQL database.

* `nodes`: what a node is (id, URL, load) and which nodes are live (pure).
* `schema`: the cluster's tables (``nodes``, ``cluster_secrets``).
* `membership`: heartbeats in the database and the live-node set (`Membership.live_nodes()`).
* `routing`: which node runs an invoke (rendezvous hashing with bounded load; pure).
* `signing`: the cluster key's HMAC over a forwarded request (pure).
* `forwarding`: sending an invoke to the node that should run it.
* `node`: `ClusterNode`, the facade the API uses.
* `leases`: publish and garbage-collection leases (``claims`` table), the origin's upload/gc protocol.
* `usage`: per-node in-use counts exchanged for cluster-wide concurrency limits.

With the embedded SQLite default there is one node, no heartbeat and no forwarding.
"""
