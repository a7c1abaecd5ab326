"""Execution environments as OCI containers run by runc."""
