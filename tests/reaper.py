"""Deleting a test server's sandbox tree without the suite waiting for it.

A server's sandbox dir holds its code trees, layers, runtime copy and rootfs skeleton (the
interpreter mirrors, ~80,000 links that took seconds per server to unlink, are host-wide now:
`snapfaas.sandbox.mirrors`), about a hundred of them per suite. `TreeReaper.retire` does what
`remove_tree` checks first (nothing mounted below, unmounting what a killed server left), then
renames the tree aside on the same filesystem, so its path is free at once, and deletes it on a
background thread while the next tests run. `drain` waits for every deletion and raises the
first failure naming the tree."""

from __future__ import annotations

import concurrent.futures
import os
import secrets
import shutil
from pathlib import Path

from snapfaas.sandbox.mounts import unmounted_tree


class TreeReaper:
    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tree-reaper")
        self._pending: list[tuple[Path, concurrent.futures.Future[None]]] = []

    def retire(self, path: Path) -> None:
        """Free `path` now (renamed aside) and delete it in the background; a missing path is
        fine. Refuses, like `remove_tree`, when something stays mounted below it."""
        if not unmounted_tree(path):
            return
        aside = path.with_name(f".retired-{path.name}-{secrets.token_hex(4)}")
        os.rename(path, aside)
        self._pending.append((path, self._pool.submit(shutil.rmtree, aside)))

    def drain(self) -> None:
        """Wait for every deletion started so far; the first that failed is raised, naming its tree."""
        pending, self._pending = self._pending, []
        for path, future in pending:
            try:
                future.result()
            except OSError as exc:
                raise OSError(f"deleting the retired tree of {path} failed: {exc}") from exc

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self._pool.shutdown(wait=True)


REAPER = TreeReaper()  # the suite's one reaper; tests/conftest.py drains it when the session ends
