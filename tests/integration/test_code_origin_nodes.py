"""Code and layer packages in a shared store origin, across nodes: a real `snapfaas serve`
(node A, with its own data and sandbox dirs) takes CreateFunction and PublishLayerVersion
through boto3; node B, an artifact store with its own code cache, chunk cache and trees that
shares only the origin and a copy of A's store secret (``<data-dir>/store.secret``),
materializes and extracts them the moment the API has answered. Once over a shared directory
origin, once over the moto S3 server. (The registry is A's own SQLite database until the
PostgreSQL registry lands, so B works at the artifact-store level.) Plus an object corrupted at
the origin: a clear error naming the package, nothing half-extracted."""

from __future__ import annotations

import base64
import io
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from snapfaas.config import Limits, store_secret_for
from snapfaas.registry.artifacts import ArtifactStore
from snapfaas.registry.packages import CodeUnavailable, PackageOrigin, package_id
from snapfaas.store import ChunkStore, load_or_create_secret, origin_from_url
from tests.conftest import ProcessFactory, ServerHandle, create, make_zip, require_root, run_server
from tests.integration.test_store_s3 import S3Peer, s3  # noqa: F401 (the moto server fixture)
from tests.storekit import offline_aws_credentials

BUCKET = "snapfaas-code"
APP = "def handler(event, context):\n    return {'node': 'any'}\n"
LAYER = {"python/shared_util.py": "VALUE = 'from the layer'\n"}


class NodeB:
    """A second node's artifact store: its own directories, the origin and secret in common."""

    def __init__(self, base: Path, origin: str, endpoint: str | None, secret_of: Path) -> None:
        base.mkdir(parents=True)
        shutil.copy2(secret_of, base / "store.secret")  # every node of a deployment has the same secret file
        self.store = ChunkStore(origin_from_url(origin, endpoint), load_or_create_secret(base / "store.secret"),
                                cache_dir=base / "store-cache", memory_bytes=1 << 20)
        self.artifacts = ArtifactStore(base / "code", base / "trees", Limits(), packages=PackageOrigin(self.store))

    def close(self) -> None:
        self.store.close()


def hex_digest(code_sha256: str) -> str:
    return base64.b64decode(code_sha256).hex()


@pytest.fixture(params=["directory", "s3"])
def deployment(request: pytest.FixtureRequest, processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory,
               tmp_path: Path) -> Iterator[tuple[ServerHandle, str, str | None]]:
    """Node A (a real server) over a directory origin or an S3 bucket: (server, origin, endpoint)."""
    require_root()
    base = tmp_path_factory.mktemp(f"code-{request.param}")
    with pytest.MonkeyPatch.context() as patch:
        endpoint: str | None = None
        if request.param == "s3":
            peer: S3Peer = request.getfixturevalue("s3")
            offline_aws_credentials(patch, tmp_path)  # inherited by the server process
            endpoint = peer.endpoint
            client = boto3.session.Session().client("s3", endpoint_url=endpoint)
            client.create_bucket(Bucket=BUCKET)
            origin = f"s3://{BUCKET}/fleet"
            args = ["--store-origin", origin, "--store-s3-endpoint-url", endpoint]
        else:
            origin = str(base / "shared-origin")
            args = ["--store-origin", origin]
        servers = run_server(processes, base, ["--keep-alive", "60", *args])
        handle = next(servers)
        try:
            yield handle, origin, endpoint
        finally:
            for _ in servers:  # stops the server and checks that nothing leaked
                pass
            if endpoint is not None:
                for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
                    for item in page.get("Contents", []):
                        client.delete_object(Bucket=BUCKET, Key=item["Key"])
                client.delete_bucket(Bucket=BUCKET)


def test_a_package_uploaded_on_one_node_is_extracted_by_another_at_once(
        deployment: tuple[ServerHandle, str, str | None], tmp_path: Path) -> None:
    server, origin, endpoint = deployment
    lam = server.client()
    layer = lam.publish_layer_version(LayerName="shared", Content={"ZipFile": make_zip(LAYER)})
    created = create(lam, "fleetfn", {"app.py": APP}, wait=False, Layers=[layer["LayerVersionArn"]])
    node = NodeB(tmp_path / "node-b", origin, endpoint, store_secret_for(server.data_dir))
    try:
        # no waiting: the 201 of CreateFunction means the package is durable at the origin
        code = node.artifacts.tree(hex_digest(created["CodeSha256"]), 3)
        assert (code / "app.py").read_text() == APP
        opt = node.artifacts.tree(hex_digest(layer["Content"]["CodeSha256"]), 3)
        assert (opt / "python" / "shared_util.py").read_text() == LAYER["python/shared_util.py"]
        fetched = zipfile.ZipFile(io.BytesIO(node.artifacts.read_zip(hex_digest(created["CodeSha256"]))))
        assert fetched.read("app.py").decode() == APP  # (the zip's bytes hold its build time: compare contents)
        assert sorted(p.name for p in node.artifacts.root.iterdir()) == sorted(
            f"{hex_digest(sha)}.zip" for sha in (created["CodeSha256"], layer["Content"]["CodeSha256"]))
    finally:
        node.close()


def test_a_package_corrupted_at_the_origin_fails_clearly_on_another_node(
        deployment: tuple[ServerHandle, str, str | None], tmp_path: Path) -> None:
    server, origin, endpoint = deployment
    lam = server.client()
    created = create(lam, "rotting", {"app.py": APP, "pad.txt": "x" * 5000}, wait=False)
    digest = hex_digest(created["CodeSha256"])
    node = NodeB(tmp_path / "node-b", origin, endpoint, store_secret_for(server.data_dir))
    try:
        names = node.store.manifest(package_id(digest)).names()
        assert len(names) == 1
        (name,) = names
        blob = bytearray(node.store.origin.get_chunk(name) or b"")
        blob[-5] ^= 0x55  # inside the AES-GCM tag
        node.store.origin.put_chunk(name, bytes(blob))
        with pytest.raises(CodeUnavailable) as caught:
            node.artifacts.tree(digest, 0)
        error = caught.value
        assert (error.code, error.status, error.missing) == ("InvalidZipFileException", 502, False)
        assert digest in error.message and "corrupt" in error.message
        assert list(node.artifacts.root.iterdir()) == [] and not node.artifacts.holds(0)
    finally:
        node.close()
