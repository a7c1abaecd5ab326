"""The registry reads of an Invoke, answered from memory.

Every Invoke resolves its function reference (version, or alias then version, and an alias's
weighted extra version) and reads the function's reserved concurrency. `InvokeLookups`
keeps what it read per function and answers from memory until the function changes.

Contract (what makes a cached answer as good as a fresh read):

- An entry of function F is dropped by the registry's observers, which run after every
  committed change to F (`Registry._note`): on this node right after the commit, in the
  committing thread; another node's change when its ``NOTIFY`` reaches this node's listener
  (registry/changes.py), on the event loop. An update, a publish's activation, an alias
  change, a deletion and a concurrency setting are all such changes.
- On a PostgreSQL registry the cache is used only while the change listener is listening:
  before its first LISTEN and while it reconnects, every lookup reads the registry; once it
  listens again (its ``connections`` count moved: notifications may have been missed
  meanwhile) the whole cache is dropped before it is used.
- A read that a change overtook (the change's observer ran while the read was in flight,
  e.g. a control-plane write in a worker thread) is answered but not kept: every drop bumps
  a generation, and an entry is stored only if the generation did not move during its read.
- "Not found" is never kept (a function or version created later is seen at once; creating
  a function or publishing a version calls no observer).
- Returned `FunctionVersion` and `Alias` objects are shared between invokes: callers must
  not mutate them (the registry's writers read their own copy).

Thread-safe (one lock around the dict; registry reads happen outside it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from snapfaas.registry.db import Registry
from snapfaas.registry.model import LATEST, Alias, FunctionVersion

T = TypeVar("T")
Key = tuple[str, str]  # ("version" | "alias" | "reserved", qualifier)


class InvokeLookups:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._entries: dict[str, dict[Key, object]] = {}  # function -> its cached answers
        self._generation = 0
        self._connections = 0  # the listener's LISTEN count the entries were read under
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    # -- wiring ------------------------------------------------------------------------------
    def attach(self) -> None:
        """Register as the registry's observer (called with each changed function's name)."""
        self.registry.observers.append(self.forget)

    def detach(self) -> None:
        if self.forget in self.registry.observers:
            self.registry.observers.remove(self.forget)

    def forget(self, name: str) -> None:
        """Function `name` changed (observer): drop what is kept of it."""
        with self._lock:
            self._generation += 1
            self._entries.pop(name, None)

    def forget_all(self) -> None:
        """Drop everything (e.g. changes may have been missed)."""
        with self._lock:
            self._generation += 1
            self._entries.clear()

    def _usable(self) -> bool:
        """Whether kept answers are valid: always on SQLite (one process owns the registry);
        on PostgreSQL only while the change listener is listening."""
        if not self.registry.postgres:
            return True
        listener = self.registry.listener
        if listener is None or listener.state != "listening":
            return False
        if listener.connections != self._connections:  # a new LISTEN: what was kept may be stale
            self.forget_all()
            self._connections = listener.connections
        return True

    # -- lookups ---------------------------------------------------------------------------
    def _get(self, name: str, key: Key, read: Callable[[], T]) -> T:
        if not self._usable():
            return read()
        with self._lock:
            entries = self._entries.get(name)
            if entries is not None and key in entries:
                self.hits += 1
                return entries[key]  # type: ignore[return-value]
            generation = self._generation
        value = read()  # raises NotFound: nothing kept
        with self._lock:
            self.misses += 1
            if self._generation == generation:
                self._entries.setdefault(name, {})[key] = value
        return value

    def version(self, name: str, version: str) -> FunctionVersion:
        """`Registry.get_version`, from memory when possible."""
        return self._get(name, ("version", version), lambda: self.registry.get_version(name, version))

    def alias(self, name: str, alias: str) -> Alias:
        """`Registry.get_alias`, from memory when possible."""
        return self._get(name, ("alias", alias), lambda: self.registry.get_alias(name, alias))

    def resolve(self, name: str, qualifier: str | None) -> tuple[FunctionVersion, Alias | None]:
        """`Registry.resolve`, from memory when possible (same answers, same errors)."""
        if qualifier is None or qualifier == LATEST or qualifier.isdigit():
            return self.version(name, qualifier or LATEST), None
        alias = self.alias(name, qualifier)
        return self.version(name, alias.version), alias

    def reserved_concurrency(self, name: str) -> int | None:
        """The function's reserved concurrency (None: unreserved); NotFound if no such function."""
        return self._get(name, ("reserved", ""), lambda: self.registry.function_info(name).reserved_concurrency)
