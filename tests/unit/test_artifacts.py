"""Code artifact store (snapfaas.registry.artifacts) in temporary directories."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import stat
import struct
import time
import zipfile
from pathlib import Path

import pytest

from snapfaas.config import Limits
from snapfaas.errors import InvalidParameterValue, RequestTooLarge
from snapfaas.registry import artifacts as artifacts_module
from snapfaas.registry.packages import CodeUnavailable
from snapfaas.registry.artifacts import UNZIP_ERROR, ArtifactStore

ABSOLUTE_TARGET = f"/tmp/snapfaas-artifact-test-{os.getpid()}.py"
SMALL = Limits(unzipped_bytes=64 * 1024, zip_bytes=256 * 1024, zip_entries=16)


def make_zip(files: dict[str, bytes | str], modes: dict[str, int] | None = None,
             method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as archive:
        for name, content in files.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = method
            info.external_attr = ((modes or {}).get(name, stat.S_IFREG | 0o644)) << 16
            archive.writestr(info, content)
    return buf.getvalue()


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "data" / "code", tmp_path / "sandbox" / "code"


@pytest.fixture
def store(dirs: tuple[Path, Path]) -> ArtifactStore:
    return ArtifactStore(dirs[0], dirs[1], SMALL)


def contents(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def assert_empty(store: ArtifactStore) -> None:
    assert contents(store.root) == []
    assert contents(store.trees) == []


# -- valid packages --------------------------------------------------------------------------
def test_ingest_valid_zip(store: ArtifactStore) -> None:
    data = make_zip({"app.py": "def handler(e, c):\n    return 1\n", "lib/util.py": "X = 1\n",
                     "bin/tool": "#!/bin/sh\n"}, modes={"bin/tool": stat.S_IFREG | 0o755})
    artifact = store.ingest(data)
    digest = hashlib.sha256(data).digest()
    assert artifact.digest == digest.hex()
    assert artifact.sha256 == base64.b64encode(digest).decode()
    assert artifact.size == len(data)
    assert (store.root / f"{artifact.digest}.zip").read_bytes() == data
    assert store.read_zip(artifact.digest) == data
    assert contents(store.trees) == []  # trees are extracted per id slice, on first use
    tree = store.tree(artifact.digest, 3)
    assert tree == store.trees / "3" / digest.hex()
    assert (tree / "app.py").read_text() == "def handler(e, c):\n    return 1\n"
    assert (tree / "lib" / "util.py").read_text() == "X = 1\n"
    assert stat.S_IMODE((tree / "app.py").stat().st_mode) == 0o400
    assert stat.S_IMODE((tree / "bin" / "tool").stat().st_mode) == 0o500
    assert stat.S_IMODE(tree.stat().st_mode) == 0o500
    assert stat.S_IMODE((tree / "lib").stat().st_mode) == 0o500
    # directories carry one fixed mtime (an extraction time would end up in SnapStart snapshots)
    assert tree.stat().st_mtime == (tree / "lib").stat().st_mtime == artifacts_module.TREE_MTIME
    assert stat.S_IMODE(store.trees.stat().st_mode) == 0o711
    assert stat.S_IMODE((store.trees / "3").stat().st_mode) == 0o711
    # nothing but the zip and the tree
    assert contents(store.root) == [f"{artifact.digest}.zip"]
    assert contents(store.trees) == ["3"]
    assert contents(store.trees / "3") == [artifact.digest]


def test_ingest_with_directory_entries(store: ArtifactStore) -> None:
    data = make_zip({"pkg/": "", "pkg/__init__.py": "", "pkg/sub/": ""},
                    modes={"pkg/": stat.S_IFDIR | 0o755, "pkg/sub/": stat.S_IFDIR | 0o755})
    tree = store.tree(store.ingest(data).digest, 0)
    assert (tree / "pkg" / "__init__.py").is_file()
    assert (tree / "pkg" / "sub").is_dir()


def test_ingest_is_idempotent(store: ArtifactStore) -> None:
    data = make_zip({"app.py": "x = 1\n"})
    first = store.ingest(data)
    mtime = (store.root / f"{first.digest}.zip").stat().st_mtime_ns
    second = store.ingest(data)
    assert second == first
    assert (store.root / f"{first.digest}.zip").stat().st_mtime_ns == mtime
    assert contents(store.root) == [f"{first.digest}.zip"]
    assert contents(store.trees) == []


def test_ingest_restores_missing_zip_and_keeps_existing_tree(store: ArtifactStore) -> None:
    data = make_zip({"app.py": "x = 1\n"})
    artifact = store.ingest(data)
    tree = store.tree(artifact.digest, 0)
    (store.root / f"{artifact.digest}.zip").unlink()
    assert store.ingest(data) == artifact
    assert store.read_zip(artifact.digest) == data
    assert contents(store.trees / "0") == [artifact.digest]
    assert (tree / "app.py").read_text() == "x = 1\n"


def test_different_packages_coexist(store: ArtifactStore) -> None:
    a = store.ingest(make_zip({"app.py": "a = 1\n"}))
    b = store.ingest(make_zip({"app.py": "b = 2\n"}))
    assert a.digest != b.digest
    assert (store.tree(a.digest, 0) / "app.py").read_text() == "a = 1\n"
    assert (store.tree(b.digest, 0) / "app.py").read_text() == "b = 2\n"


def test_each_slice_gets_its_own_tree(store: ArtifactStore) -> None:
    a = store.ingest(make_zip({"app.py": "a = 1\n"}))
    first, second = store.tree(a.digest, 0), store.tree(a.digest, 7)
    assert first != second
    assert (first / "app.py").read_text() == (second / "app.py").read_text() == "a = 1\n"
    assert store.holds(0) and store.holds(7) and not store.holds(1)


def test_slice_owner_gets_the_tree(dirs: tuple[Path, Path]) -> None:
    if os.geteuid() != 0:
        pytest.fail("chown needs root (the suite runs as root)")
    owners = {0: 54321}
    store = ArtifactStore(dirs[0], dirs[1], SMALL, owner_of=lambda index: owners[index])
    digest = store.ingest(make_zip({"app.py": "", "d/m.py": ""})).digest
    tree = store.tree(digest, 0)
    for path in (tree, tree / "app.py", tree / "d", tree / "d" / "m.py"):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (54321, 54321), path
    assert store.trees.stat().st_uid == os.geteuid()
    assert (store.trees / "0").stat().st_uid == os.geteuid()
    # the slice's owner changed (another --id-range-base): the tree is re-extracted for it
    owners[0] = 54400
    assert store.tree(digest, 0) == tree
    assert tree.stat().st_uid == 54400 and (tree / "d" / "m.py").stat().st_uid == 54400


# -- rejected packages -----------------------------------------------------------------------
def symlink_zip() -> bytes:
    return make_zip({"app.py": "", "link": "/etc/passwd"}, modes={"link": stat.S_IFLNK | 0o777})


def lying_zip() -> bytes:
    """A deflated 1 MiB of zeros whose headers claim 100 bytes (a bomb that lies about its size)."""
    data = bytearray(make_zip({"app.py": b"\0" * (1 << 20)}))
    real = 1 << 20
    fake = 100
    patched = 0
    # local file header: signature PK\3\4, uncompressed size at offset 22
    pos = data.find(b"PK\x03\x04")
    assert struct.unpack_from("<I", data, pos + 22)[0] == real
    struct.pack_into("<I", data, pos + 22, fake)
    patched += 1
    # central directory header: signature PK\1\2, uncompressed size at offset 24
    pos = data.find(b"PK\x01\x02")
    assert struct.unpack_from("<I", data, pos + 24)[0] == real
    struct.pack_into("<I", data, pos + 24, fake)
    patched += 1
    assert patched == 2
    out = bytes(data)
    assert zipfile.ZipFile(io.BytesIO(out)).getinfo("app.py").file_size == fake
    return out


def valid_zip() -> bytes:
    return make_zip({"app.py": "def handler(e, c):\n    return e\n" * 20, "data.txt": "x" * 500})


BAD_PACKAGES = {
    "not-a-zip": b"this is not a zip file at all",
    "empty": b"",
    "truncated": valid_zip()[: len(valid_zip()) // 2],
    "truncated-tail": valid_zip()[:-10],
    "dotdot": make_zip({"app.py": "", "../evil.py": "x"}),
    "dotdot-nested": make_zip({"app.py": "", "a/../../evil.py": "x"}),
    "absolute": make_zip({"app.py": "", ABSOLUTE_TARGET: "x"}),
    "backslash": make_zip({"app.py": "", "..\\evil.py": "x"}),
    "drive": make_zip({"app.py": "", "C:/evil.py": "x"}),
    "symlink": symlink_zip(),
    "bomb": make_zip({"app.py": b"\0" * (65 * 1024)}),
    "bomb-many-files": make_zip({f"f{i}": b"\0" * (10 * 1024) for i in range(7)}),
    "lying-header": lying_zip(),
    "too-many-entries": make_zip({f"f{i}.py": "" for i in range(17)}),
    "file-then-dir": make_zip({"a": "x", "a/b": "y"}),
}


@pytest.mark.parametrize("name", sorted(BAD_PACKAGES))
def test_bad_package_rejected_and_nothing_left(store: ArtifactStore, tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidParameterValue) as info:
        store.ingest(BAD_PACKAGES[name])
    assert info.value.code == "InvalidParameterValueException"
    assert info.value.status == 400
    assert UNZIP_ERROR in info.value.message or "Unzipped size must be smaller than 65536 bytes" in info.value.message
    assert_empty(store)
    assert not list(tmp_path.rglob("evil.py"))
    assert not Path(ABSOLUTE_TARGET).exists()


def test_bomb_message(store: ArtifactStore) -> None:
    with pytest.raises(InvalidParameterValue, match="Unzipped size must be smaller than 65536 bytes"):
        store.ingest(BAD_PACKAGES["bomb"])
    # exactly at the limit is fine
    assert store.tree(store.ingest(make_zip({"app.py": b"\0" * (64 * 1024)})).digest, 0).is_dir()


def test_extraction_budget_backs_up_the_declared_size_check(store: ArtifactStore) -> None:
    """Even when the declared-size check is bypassed, extraction stops at the byte budget."""
    data = make_zip({"a.bin": b"\0" * (40 * 1024), "b.bin": b"\0" * (40 * 1024)})
    infos = zipfile.ZipFile(io.BytesIO(data)).infolist()
    with pytest.raises(InvalidParameterValue, match="Unzipped size must be smaller than 65536 bytes"):
        store._materialize(store.trees / "0" / ("f" * 64), data, infos, None)
    assert contents(store.trees / "0") == []


def test_zip_too_large(store: ArtifactStore) -> None:
    with pytest.raises(RequestTooLarge):
        store.ingest(os.urandom(256 * 1024 + 1))
    assert_empty(store)


def test_rejected_package_leaves_existing_artifacts_alone(store: ArtifactStore) -> None:
    good = store.ingest(valid_zip())
    for data in BAD_PACKAGES.values():
        with pytest.raises(InvalidParameterValue):
            store.ingest(data)
    assert contents(store.root) == [f"{good.digest}.zip"]
    assert contents(store.trees) == []


# -- garbage collection and re-extraction ----------------------------------------------------
def test_collect_garbage(store: ArtifactStore) -> None:
    keep = store.ingest(make_zip({"app.py": "keep = 1\n"}))
    drop = store.ingest(make_zip({"app.py": "drop = 1\n"}))
    kept_tree = store.tree(keep.digest, 0)
    store.tree(drop.digest, 0)
    store.tree(keep.digest, 1)  # the kept digest, but no version of slice 1 uses it
    # leftovers of an interrupted ingest or extraction, and a tree of the layout before slices
    (store.root / f".{drop.digest}.zip.tmp").write_bytes(b"partial")
    (store.trees / "0" / f".{drop.digest}.abc123").mkdir()
    (store.trees / "0" / f".{keep.digest}.def456").mkdir()  # a temporary even of a kept digest
    (store.trees / keep.digest).mkdir()
    removed = store.collect_garbage({keep.digest}, {(0, keep.digest)})
    assert removed == 7
    assert contents(store.root) == [f"{keep.digest}.zip"]
    assert contents(store.trees) == ["0"]  # slice 1's directory went with its last tree
    assert contents(store.trees / "0") == [keep.digest]
    assert (kept_tree / "app.py").read_text() == "keep = 1\n"
    assert store.collect_garbage({keep.digest}, {(0, keep.digest)}) == 0
    assert store.collect_garbage(set(), set()) == 2
    assert_empty(store)


def test_tree_reextracts_deleted_tree(store: ArtifactStore) -> None:
    artifact = store.ingest(make_zip({"app.py": "x = 1\n", "d/e.py": "y = 2\n"}))
    tree = store.tree(artifact.digest, 0)
    shutil.rmtree(tree)
    assert not tree.exists()
    assert store.tree(artifact.digest, 0) == tree
    assert (tree / "app.py").read_text() == "x = 1\n"
    assert (tree / "d" / "e.py").read_text() == "y = 2\n"
    assert stat.S_IMODE(tree.stat().st_mode) == 0o500
    assert contents(store.trees / "0") == [artifact.digest]


def test_tree_of_unknown_digest_is_not_created(store: ArtifactStore) -> None:
    with pytest.raises(CodeUnavailable) as caught:
        store.tree("0" * 64, 0)
    assert caught.value.missing and (caught.value.code, caught.value.status) == ("InvalidZipFileException", 502)
    assert not (store.trees / "0" / ("0" * 64)).exists()
    assert contents(store.root) == []


def test_tree_rejects_corrupted_stored_zip(store: ArtifactStore) -> None:
    artifact = store.ingest(make_zip({"app.py": ""}))
    (store.root / f"{artifact.digest}.zip").write_bytes(b"garbage")
    with pytest.raises(CodeUnavailable) as caught:  # its bytes no longer hash to the digest
        store.tree(artifact.digest, 0)
    assert not caught.value.missing
    assert not store.holds(0)


def with_encryption_flag(data: bytes, name: str) -> bytes:
    """`data` with the "encrypted" bit (bit 0 of the general purpose flags) set on entry `name`,
    in its local header and its central directory record (zipfile never writes it itself)."""
    out = bytearray(data)
    offset = zipfile.ZipFile(io.BytesIO(data)).getinfo(name).header_offset
    out[offset + 6] |= 0x1
    pos = out.find(b"PK\x01\x02")
    while pos != -1:
        length = struct.unpack_from("<H", out, pos + 28)[0]
        if bytes(out[pos + 46:pos + 46 + length]) == name.encode():
            out[pos + 8] |= 0x1
        pos = out.find(b"PK\x01\x02", pos + 4)
    return bytes(out)


def test_rejects_encrypted_entry(store: ArtifactStore) -> None:
    """An encrypted entry is refused up front, with a message naming it, and nothing is stored."""
    data = with_encryption_flag(make_zip({"app.py": "def handler(e, c):\n    return 1\n", "secret.py": "X = 1\n"},
                                         method=zipfile.ZIP_STORED), "secret.py")
    assert zipfile.ZipFile(io.BytesIO(data)).getinfo("secret.py").flag_bits & 0x1
    with pytest.raises(InvalidParameterValue) as info:
        store.ingest(data)
    assert info.value.message == f"{UNZIP_ERROR} (entry 'secret.py' is encrypted; encrypted zip entries are not supported)"
    assert info.value.status == 400
    assert_empty(store)


# -- merged layer trees (/opt) ----------------------------------------------------------------
def test_merged_layers_later_files_win_and_trees_are_shared(store: ArtifactStore) -> None:
    base = store.ingest(make_zip({"python/shared.py": "base", "python/only_base.py": "b", "python/pkg/x": "file"}))
    top = store.ingest(make_zip({"python/shared.py": "top", "python/pkg/x/inner.py": "dir now"}))
    merged = store.merged("opt-test", [base.digest, top.digest], 2)
    assert merged == store.trees / "2" / "opt-test"
    assert (merged / "python" / "shared.py").read_text() == "top"
    assert (merged / "python" / "only_base.py").read_text() == "b"
    assert (merged / "python" / "pkg" / "x" / "inner.py").read_text() == "dir now"  # a later dir replaces a file
    # hard links to the layers' own cached trees: no copy, same modes
    layer_file = store.tree(top.digest, 2) / "python" / "shared.py"
    assert (merged / "python" / "shared.py").stat().st_ino == layer_file.stat().st_ino
    assert stat.S_IMODE(merged.stat().st_mode) == 0o500
    assert merged.stat().st_mtime == artifacts_module.TREE_MTIME
    assert store.merged("opt-test", [base.digest, top.digest], 2) == merged  # made once
    assert store.unzipped_size(base.digest) == len("base") + len("b") + len("file")
    # garbage collection keeps only the referenced trees
    store.collect_garbage({base.digest, top.digest}, {(2, base.digest), (2, top.digest)})
    assert not merged.exists()


# -- file times ------------------------------------------------------------------------------
def test_extracted_files_keep_the_zip_entries_mtime(store: ArtifactStore) -> None:
    """As unzip (and Lambda) extract: a shipped .pyc is only used when its source's mtime is
    the one it was compiled against."""
    data = make_zip({"app.py": "x = 1\n", "lib/util.py": "y = 2\n"})
    tree = store.tree(store.ingest(data).digest, 0)
    expected = time.mktime((2024, 1, 1, 0, 0, 0, 0, 0, -1))  # make_zip's DOS date_time, local time
    assert (tree / "app.py").stat().st_mtime == (tree / "lib" / "util.py").stat().st_mtime == expected


def test_the_extended_timestamp_field_wins_over_the_dos_time(store: ArtifactStore) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        info = zipfile.ZipInfo("app.py", date_time=(2024, 1, 1, 0, 0, 0))
        info.external_attr = (stat.S_IFREG | 0o644) << 16
        info.extra = struct.pack("<HHBi", artifacts_module.EXTENDED_TIMESTAMP, 5, 1, 1_700_000_001)  # an odd second
        archive.writestr(info, "x = 1\n")
    tree = store.tree(store.ingest(buf.getvalue()).digest, 0)
    assert (tree / "app.py").stat().st_mtime == 1_700_000_001


def test_a_shipped_pyc_is_used_after_extraction(store: ArtifactStore, tmp_path: Path) -> None:
    """A module compiled before zipping imports from its .pyc: the source is never compiled."""
    import importlib.util
    import subprocess
    import sys

    source = b"VALUE = 'from source'\n"
    mtime = 1_700_000_001
    code = compile("VALUE = 'from bytecode'\n", "mod.py", "exec")  # differs from the source: shows which ran
    import marshal

    pyc = importlib.util.MAGIC_NUMBER + struct.pack("<III", 0, mtime, len(source)) + marshal.dumps(code)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, content in (("mod.py", source), (f"__pycache__/mod.{sys.implementation.cache_tag}.pyc", pyc)):
            info = zipfile.ZipInfo(name, date_time=(2023, 11, 14, 22, 13, 20))
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.extra = struct.pack("<HHBi", artifacts_module.EXTENDED_TIMESTAMP, 5, 1, mtime)
            archive.writestr(info, content)
    tree = store.tree(store.ingest(buf.getvalue()).digest, 0)
    out = subprocess.run([sys.executable, "-B", "-c", "import mod; print(mod.VALUE)"], cwd=tree, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "from bytecode"


def test_deploy_zips_ship_bytecode_that_the_extracted_tree_uses(store: ArtifactStore, tmp_path: Path) -> None:
    """`snapfaas deploy DIR`: __pycache__ goes along and every entry keeps its mtime to the
    second (an odd one here: the DOS time alone would round it), so the .pyc stays valid."""
    import py_compile
    import subprocess
    import sys

    from snapfaas.cli import zip_directory

    source = tmp_path / "src"
    source.mkdir()
    (source / "mod.py").write_text("VALUE = 'source'\n")
    os.utime(source / "mod.py", (1_700_000_001, 1_700_000_001))
    py_compile.compile(str(source / "mod.py"), doraise=True)
    pyc = source / "__pycache__" / f"mod.{sys.implementation.cache_tag}.pyc"
    # the same header (mtime, size: sources of one length), other code: shows which one an import ran
    (source / "other.py").write_text("VALUE = 'pyc!!!'\n")
    os.utime(source / "other.py", (1_700_000_001, 1_700_000_001))
    other = py_compile.compile(str(source / "other.py"), cfile=str(tmp_path / "other.pyc"), doraise=True)
    pyc.write_bytes(Path(other).read_bytes())
    (source / "other.py").unlink()
    tree = store.tree(store.ingest(zip_directory(source)).digest, 0)
    assert (tree / "mod.py").stat().st_mtime == 1_700_000_001
    out = subprocess.run([sys.executable, "-B", "-c", "import mod; print(mod.VALUE)"], cwd=tree, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "pyc!!!"
