"""Snapshot-like trees for the store's tests: CRIU-ish page images (random pages, zero pages,
repeated library text), a nested /tmp with a symlink, and helpers to compare trees."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from snapfaas.store import CHUNK_SIZE

PAGE = 4096


def library_text(seed: int, size: int) -> bytes:
    """Compressible, non-repeating bytes shaped like code and strings (deterministic per seed)."""
    rng = random.Random(seed)
    words = [b"import", b"def", b"return", b"self", b"torch", b"numpy", b"lambda", b"class", b"None", b"yield"]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choice(words) for _ in range(8)) + b"(%d)\n" % rng.randrange(1 << 30)
    return bytes(out[:size])


def make_tree(root: Path, seed: int = 1, pages_chunks: int = 6, library_chunks: int = 4) -> Path:
    """A snapshot-like tree: pages-1.img (random chunks with a zero chunk in the middle and a
    partial last chunk), a library-like image, small files, a nested dir and a symlink."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    pages = bytearray()
    for index in range(pages_chunks):
        pages += bytes(CHUNK_SIZE) if index == 2 else rng.randbytes(CHUNK_SIZE)
    pages += rng.randbytes(3 * PAGE + 123)
    (root / "pages-1.img").write_bytes(pages)
    (root / "pages-2.img").write_bytes(library_text(seed, library_chunks * CHUNK_SIZE + 777))
    (root / "core-1.img").write_bytes(b"core" * 300)
    (root / "empty.img").write_bytes(b"")
    os.chmod(root / "core-1.img", 0o640)
    (root / "tmp" / "cache").mkdir(parents=True)
    (root / "tmp" / "cache" / "model.bin").write_bytes(bytes(CHUNK_SIZE + 10) + b"tail")
    os.symlink("../pages-1.img", root / "tmp" / "pages-link")
    os.chmod(root / "tmp", 0o751)
    return root


def tree_digest(root: Path) -> dict[str, tuple[str, int, str]]:
    """path → (kind, mode, sha256 or link target) for everything under `root`."""
    out: dict[str, tuple[str, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if path.is_symlink():
                out[rel] = ("link", 0, os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir", st.st_mode & 0o7777, "")
            else:
                out[rel] = ("file", st.st_mode & 0o7777, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x40
    path.write_bytes(bytes(data))


def offline_aws_credentials(patch: pytest.MonkeyPatch, scratch: Path) -> None:
    """Credentials for an S3 origin through the standard AWS variables (inherited by server
    processes), nothing from the host's config files, no instance-metadata lookups."""
    patch.setenv("AWS_ACCESS_KEY_ID", "testing")
    patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    patch.setenv("AWS_CONFIG_FILE", str(scratch / "no-config"))
    patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(scratch / "no-credentials"))
    patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    patch.delenv("AWS_PROFILE", raising=False)
