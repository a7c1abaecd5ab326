"""The store origin is the source of truth for code and layer packages, on one embedded server
(a directory origin under the data dir, the default): with this node's code cache, extracted
trees and chunk cache all deleted, invoke, GetFunction's Code.Location and GetLayerVersion's
Content.Location still work from the origin; a package corrupted there answers Invoke with
Lambda's InvalidZipFileException (502) and the server keeps serving."""

from __future__ import annotations

import base64
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import botocore.exceptions
import pytest

from snapfaas.config import store_secret_for
from snapfaas.registry.packages import package_id
from snapfaas.sandbox.mounts import remove_tree
from snapfaas.store import ChunkStore, DirectoryOrigin, load_or_create_secret
from tests.conftest import ProcessFactory, ServerHandle, create, invoke_json, make_zip, require_root, run_server
from tests.e2e.snapstart_support import wait_for

APP = """
import shared_util

def handler(event, context):
    return {"layer": shared_util.VALUE, "echo": event.get("n")}
"""
LAYER = {"python/shared_util.py": "VALUE = 'from the layer'\n"}


@pytest.fixture(scope="module")
def server(processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    require_root()
    base = tmp_path_factory.mktemp("codeorigin")
    yield from run_server(processes, base, ["--keep-alive", "60"])


def digest_of(code_sha256: str) -> str:
    return base64.b64decode(code_sha256).hex()


def sandbox_dir(server: ServerHandle) -> Path:
    return Path(server.extra_args[server.extra_args.index("--sandbox-dir") + 1])


def empty_caches(server: ServerHandle) -> None:
    """Delete everything the (stopped) server keeps of code (zips, extracted trees) and its
    chunk cache: only the origin (<data-dir>/store) is left."""
    shutil.rmtree(server.data_dir / "code")
    remove_tree(sandbox_dir(server) / "code")
    shutil.rmtree(server.data_dir / "store-cache")


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:  # the server's own loopback endpoint
        return response.read()


def test_deploy_invoke_and_layers_work_from_the_origin_alone(server: ServerHandle) -> None:
    lam = server.client()
    layer_zip, code_zip = make_zip(LAYER), make_zip({"app.py": APP})
    layer = lam.publish_layer_version(LayerName="origin-layer", Content={"ZipFile": layer_zip})
    created = create(lam, "fromorigin", {"app.py": APP}, Layers=[layer["LayerVersionArn"]])
    origin = server.data_dir / "store"
    for sha in (created["CodeSha256"], layer["Content"]["CodeSha256"]):
        assert (origin / "manifests" / package_id(digest_of(sha))).is_file()
    response, body = invoke_json(lam, "fromorigin", {"n": 1})
    assert "FunctionError" not in response and body == {"layer": "from the layer", "echo": 1}

    server.stop()
    empty_caches(server)
    server.start()
    assert not any((server.data_dir / "code").glob("*.zip"))
    response, body = invoke_json(lam, "fromorigin", {"n": 2})
    assert "FunctionError" not in response, body
    assert body == {"layer": "from the layer", "echo": 2}
    assert download(lam.get_function(FunctionName="fromorigin")["Code"]["Location"]) == code_zip
    version = lam.get_layer_version(LayerName="origin-layer", VersionNumber=layer["Version"])
    assert download(version["Content"]["Location"]) == layer_zip

    # a function created now, after the restart, works the same (upload, then invoke)
    create(lam, "afterwards", {"app.py": APP}, Layers=[layer["LayerVersionArn"]])
    assert invoke_json(lam, "afterwards", {"n": 3})[1] == {"layer": "from the layer", "echo": 3}


def test_a_package_corrupt_at_the_origin_answers_invalid_zip_file(server: ServerHandle) -> None:
    lam = server.client()
    created = create(lam, "rotten", {"app.py": "def handler(e, c):\n    return 'fine'\n"})
    create(lam, "healthy", {"app.py": "def handler(e, c):\n    return 'still fine'\n"})
    assert invoke_json(lam, "rotten")[1] == "fine"
    origin = server.data_dir / "store"
    server.stop()
    empty_caches(server)
    store = ChunkStore(DirectoryOrigin(origin), load_or_create_secret(store_secret_for(server.data_dir)), memory_bytes=0)
    try:
        names = store.manifest(package_id(digest_of(created["CodeSha256"]))).names()
    finally:
        store.close()
    for name in names:
        chunk = origin / "chunks" / name[:2] / name
        blob = bytearray(chunk.read_bytes())
        blob[-3] ^= 0xFF
        chunk.write_bytes(bytes(blob))
    server.start()
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        lam.invoke(FunctionName="rotten", Payload=b"{}")
    error = caught.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 502
    assert error["Error"]["Code"] == "InvalidZipFileException"
    assert error["Error"]["Message"].startswith("Lambda could not unzip the deployment package")
    assert str(origin) not in error["Error"]["Message"]  # no host paths for the caller
    assert invoke_json(lam, "healthy")[1] == "still fine"  # the server keeps serving


def test_a_data_dir_whose_zips_are_not_in_the_origin_migrates_once(server: ServerHandle) -> None:
    """A data dir from before packages lived in the origin: its zips in <data-dir>/code only."""
    lam = server.client()
    created = create(lam, "legacy", {"app.py": "def handler(e, c):\n    return 'old'\n"})
    manifest = server.data_dir / "store" / "manifests" / package_id(digest_of(created["CodeSha256"]))
    server.stop()
    origin = server.data_dir / "store"
    store = ChunkStore(DirectoryOrigin(origin), load_or_create_secret(store_secret_for(server.data_dir)), memory_bytes=0)
    try:
        names = store.manifest(manifest.name).names()
    finally:
        store.close()
    manifest.unlink()
    for name in names:  # its chunks too: nothing of it at the origin
        (origin / "chunks" / name[:2] / name).unlink()
    before = server.log_path.read_text()
    server.start()
    assert manifest.is_file()
    started = server.log_path.read_text()[len(before):]
    assert "code package(s) of this data dir to the store origin" in started
    server.stop()
    shutil.rmtree(server.data_dir / "code")  # the origin has it now: the cache may go
    remove_tree(sandbox_dir(server) / "code")
    before = server.log_path.read_text()
    server.start()
    assert "code package(s) of this data dir" not in server.log_path.read_text()[len(before):]  # said once
    assert invoke_json(lam, "legacy")[1] == "old"


def test_a_package_leaves_the_origin_when_nothing_references_it(server: ServerHandle) -> None:
    """Directory origin (grace 0): a package shared by two functions stays until the second one
    is deleted, then a background collection removes it; nothing else is touched."""
    lam = server.client()
    package = make_zip({"app.py": "def handler(e, c):\n    return 'shared'\n"})  # one zip: its bytes hold its build time
    first = create(lam, "holder-1", {}, Code={"ZipFile": package})
    second = create(lam, "holder-2", {}, Code={"ZipFile": package})
    assert second["CodeSha256"] == first["CodeSha256"], "test premise: one package shared by two functions"
    manifest = server.data_dir / "store" / "manifests" / package_id(digest_of(first["CodeSha256"]))
    bystander = create(lam, "bystander", {"app.py": "def handler(e, c):\n    return 'still fine'\n"})
    other = server.data_dir / "store" / "manifests" / package_id(digest_of(bystander["CodeSha256"]))
    lam.delete_function(FunctionName="holder-1")
    assert invoke_json(lam, "holder-2")[1] == "shared"
    assert manifest.is_file()
    lam.delete_function(FunctionName="holder-2")
    wait_for(lambda: not manifest.exists(), 30, "the unreferenced package to leave the origin")
    assert other.is_file() and invoke_json(lam, "bystander")[1] == "still fine"
