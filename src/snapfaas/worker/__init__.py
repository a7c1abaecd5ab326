"""Per-version pools of execution environments: routing, scale-out, keep-alive, limits, logs."""
