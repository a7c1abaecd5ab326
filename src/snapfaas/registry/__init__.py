"""Functions, versions, aliases and code artifacts, persisted in SQLite."""
