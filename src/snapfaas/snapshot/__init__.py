"""Checkpoint/restore of execution environments with CRIU (through runc), encrypted at rest."""
