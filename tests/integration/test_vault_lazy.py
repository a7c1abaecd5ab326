"""SnapshotVault with the snapshot view (lazy restores), over a real FUSE mount and a real store:
no plaintext copy is kept once a snapshot is stored; a lease exposes it for the slice's group;
a leased snapshot that is deleted keeps its manifest and chunks (a live process still faults
pages from it) until its last lease goes, then the next collection removes it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapfaas.snapshot.vault import SnapshotVault
from snapfaas.snapshot.view import SnapshotView
from snapfaas.store import ChunkStore, DirectoryOrigin, SnapshotMissing
from tests.storekit import make_tree

SECRET = bytes(range(32))
SLICE = 3
GROUP = 5000 + SLICE


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[SnapshotVault]:
    run = Path(tempfile.mkdtemp(prefix="snapfaas-vault-test-", dir="/dev/shm"))
    store = ChunkStore(DirectoryOrigin(tmp_path / "origin"), SECRET, cache_dir=tmp_path / "cache", memory_bytes=1 << 20)
    view = SnapshotView(store, run / "view")
    view.start()
    made = SnapshotVault(store, run / "cache", image_owner=0, group_of=lambda index: 5000 + index, view=view)
    try:
        yield made
    finally:
        made.close()
        shutil.rmtree(run)


def seal(vault: SnapshotVault, tmp_path: Path, snapshot_id: str) -> None:
    plain = vault.work_dir(snapshot_id)
    source = make_tree(tmp_path / f"src-{snapshot_id}")
    for path in source.iterdir():
        if path.is_file() and not path.is_symlink():
            shutil.copy(path, plain / path.name)
    vault.seal(snapshot_id, plain, {"restore_memory": "map"}, SLICE)


def test_a_stored_snapshot_leaves_no_plaintext_and_a_lease_exposes_it_for_the_slice(vault: SnapshotVault, tmp_path: Path) -> None:
    seal(vault, tmp_path, "fn-1-aaaaaaaaaaaa")
    assert list(vault.cache.iterdir()) == []  # the dump directory went once stored
    lease = vault.lease("fn-1-aaaaaaaaaaaa", SLICE)
    assert lease.mapped and vault.view.exposed() == {"fn-1-aaaaaaaaaaaa": GROUP}
    assert (lease.path / "pages-1.img").read_bytes() == (tmp_path / "src-fn-1-aaaaaaaaaaaa" / "pages-1.img").read_bytes()
    assert lease.path.stat().st_gid == GROUP and vault.holds(SLICE) and not vault.holds(SLICE + 1)
    lease.release()


def test_a_lazy_lease_is_a_local_copy_of_the_small_images_with_the_page_images_linked_into_the_view(
        vault: SnapshotVault, tmp_path: Path) -> None:
    """CRIU reads the small images whole at every restore: from a tmpfs, never through FUSE;
    page images (and files over 1 MiB) stay in the view, where CRIU maps them."""
    seal(vault, tmp_path, "fn-1-cccccccccccc")
    source = tmp_path / "src-fn-1-cccccccccccc"
    before = vault.view.reads
    lease = vault.lease("fn-1-cccccccccccc", SLICE)
    assert lease.path == vault.cache / "fn-1-cccccccccccc"
    for name in ("pages-1.img", "pages-2.img"):
        assert os.readlink(lease.path / name) == f"../../view/fn-1-cccccccccccc/{name}"  # relative: see _link_view
    assert not (lease.path / "core-1.img").is_symlink() and not (lease.path / "empty.img").is_symlink()
    assert (lease.path / "core-1.img").read_bytes() == (source / "core-1.img").read_bytes()
    assert (lease.path / "empty.img").read_bytes() == b""
    for path in (lease.path, lease.path / "core-1.img"):  # the tightest permissions that restore
        st = path.lstat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, GROUP, 0o750 if path.is_dir() else 0o640)
    assert vault.view.reads == before  # the small images came from the store, not through the view
    lease.release()
    again = vault.lease("fn-1-cccccccccccc", SLICE)  # kept: the next lease reads nothing
    assert again.path == lease.path and vault.view.reads == before
    again.release()


def test_a_cache_entry_that_is_not_a_lazy_copy_is_rebuilt_as_one(vault: SnapshotVault, tmp_path: Path) -> None:
    seal(vault, tmp_path, "fn-1-dddddddddddd")
    lease = vault.lease("fn-1-dddddddddddd", SLICE)
    lease.release()
    (lease.path / ".lazy").unlink()  # looks like an eager copy now: a lazy lease never uses one
    vault.lease("fn-1-dddddddddddd", SLICE).release()
    assert (lease.path / ".lazy").exists() and (lease.path / "pages-1.img").is_symlink()


def test_a_deleted_snapshot_stays_readable_while_leased_and_goes_after_the_last_release(vault: SnapshotVault, tmp_path: Path) -> None:
    seal(vault, tmp_path, "fn-1-bbbbbbbbbbbb")
    released: list[str] = []
    vault.on_unpinned_doomed = released.append
    lease = vault.lease("fn-1-bbbbbbbbbbbb", SLICE)
    fd = os.open(lease.path / "pages-1.img", os.O_RDONLY)  # what a restored process's map holds
    try:
        vault.delete("fn-1-bbbbbbbbbbbb")
        vault.collect_garbage(referenced=set())
        assert vault.store.manifest("fn-1-bbbbbbbbbbbb")  # kept: a live lease
        assert not lease.path.exists()  # but no longer exposed to new restores
        expected = (tmp_path / "src-fn-1-bbbbbbbbbbbb" / "pages-1.img").read_bytes()
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # whatever is not cached is read from the chunks
        assert os.pread(fd, len(expected), 0) == expected
        assert released == []
        lease.release()
        assert released == ["fn-1-bbbbbbbbbbbb"]
    finally:
        os.close(fd)
    vault.collect_garbage(referenced=set())
    with pytest.raises(SnapshotMissing):
        vault.store.manifest("fn-1-bbbbbbbbbbbb")
