"""Cluster mode: what several snapfaas nodes sharing one database and one store origin coordinate
through (leases on publishes and garbage collection, per-node usage for cluster-wide limits)."""
