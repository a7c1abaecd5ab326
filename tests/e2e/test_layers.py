"""Layers through real boto3 and the real AWS CLI against a real server: the layer API with
AWS's shapes and errors, functions importing from /opt in the order their layers are given
(later layers win), /opt read-only, and a SnapStart version that restores with its layer
still importable after the layer version was deleted."""

from __future__ import annotations

import base64
import hashlib
import signal
from pathlib import Path

import botocore.exceptions
import pytest

from snapfaas.sandbox.mounts import remove_tree
from tests.conftest import ROLE, ServerHandle, create, invoke_json, make_zip, require_root, run_server
from tests.e2e.snapstart_support import SNAPSTART, assert_restored, publish
from tests.e2e.test_control_auth import aws

PREFIX = "arn:aws:lambda:us-east-1:000000000000:"

LAYER_APP = """
import os, sys
import shared, only_a, sitepkg


def handler(event, context):
    try:
        open("/opt/python/new-file", "w")
        writable = True
    except OSError:
        writable = False
    return {"shared": shared.VALUE, "only_a": only_a.VALUE, "sitepkg": sitepkg.VALUE,
            "path": [p for p in sys.path if p.startswith("/opt")], "opt_writable": writable,
            "files": sorted(os.listdir("/opt/python"))}
"""


def layer_zip(files: dict[str, str]) -> bytes:
    return make_zip(files)


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def error_of(call, **kwargs):  # type: ignore[no-untyped-def]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        call(**kwargs)
    response = info.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"], response["Error"]["Message"]


def test_layer_version_lifecycle(lam) -> None:  # type: ignore[no-untyped-def]
    package = layer_zip({"python/helper.py": "VALUE = 1\n"})
    first = lam.publish_layer_version(LayerName="lifecycle", Content={"ZipFile": package}, Description="first",
                                      LicenseInfo="MIT", CompatibleRuntimes=["python3.12"],
                                      CompatibleArchitectures=["x86_64"])
    assert first["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert (first["LayerArn"], first["LayerVersionArn"], first["Version"]) == (
        PREFIX + "layer:lifecycle", PREFIX + "layer:lifecycle:1", 1)
    assert first["Content"]["CodeSha256"] == sha256_b64(package)
    assert first["Content"]["CodeSize"] == len(package)
    assert (first["Description"], first["LicenseInfo"], first["CompatibleRuntimes"], first["CompatibleArchitectures"]) == (
        "first", "MIT", ["python3.12"], ["x86_64"])
    second = lam.publish_layer_version(LayerName="lifecycle", Content={"ZipFile": package}, CompatibleRuntimes=["python3.13"])
    assert (second["Version"], second["CompatibleArchitectures"], second["Description"]) == (2, [], "")
    assert "LicenseInfo" not in second

    got = lam.get_layer_version(LayerName="lifecycle", VersionNumber=1)
    by_arn = lam.get_layer_version_by_arn(Arn=PREFIX + "layer:lifecycle:1")
    for answer in (got, by_arn):
        assert {k: v for k, v in answer.items() if k not in ("ResponseMetadata", "Content")} == {
            k: v for k, v in first.items() if k not in ("ResponseMetadata", "Content")}
    fetched = lam.get_layer_version(LayerName=PREFIX + "layer:lifecycle", VersionNumber=2)
    assert fetched["Version"] == 2

    listed = lam.list_layer_versions(LayerName="lifecycle")["LayerVersions"]
    assert [v["Version"] for v in listed] == [2, 1]
    assert set(listed[1]) == {"LayerVersionArn", "Version", "Description", "CreatedDate", "CompatibleRuntimes",
                              "CompatibleArchitectures", "LicenseInfo"}
    assert [v["Version"] for v in lam.list_layer_versions(LayerName="lifecycle", CompatibleRuntime="python3.12")["LayerVersions"]] == [1]
    assert [v["Version"] for v in lam.list_layer_versions(LayerName="lifecycle", CompatibleArchitecture="x86_64")["LayerVersions"]] == [1]
    page = lam.list_layer_versions(LayerName="lifecycle", MaxItems=1)
    assert [v["Version"] for v in page["LayerVersions"]] == [2]
    rest = lam.list_layer_versions(LayerName="lifecycle", MaxItems=1, Marker=page["NextMarker"])
    assert [v["Version"] for v in rest["LayerVersions"]] == [1] and "NextMarker" not in rest
    paginated = [v["Version"] for p in lam.get_paginator("list_layer_versions").paginate(
        LayerName="lifecycle", PaginationConfig={"PageSize": 1}) for v in p["LayerVersions"]]
    assert paginated == [2, 1]

    layers = {item["LayerName"]: item for item in lam.list_layers()["Layers"]}
    assert layers["lifecycle"]["LayerArn"] == PREFIX + "layer:lifecycle"
    assert layers["lifecycle"]["LatestMatchingVersion"]["Version"] == 2
    matching = {i["LayerName"]: i for i in lam.list_layers(CompatibleRuntime="python3.12")["Layers"]}
    assert matching["lifecycle"]["LatestMatchingVersion"]["Version"] == 1

    assert lam.delete_layer_version(LayerName="lifecycle", VersionNumber=1)["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert lam.delete_layer_version(LayerName="lifecycle", VersionNumber=1)["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert [v["Version"] for v in lam.list_layer_versions(LayerName="lifecycle")["LayerVersions"]] == [2]
    third = lam.publish_layer_version(LayerName="lifecycle", Content={"ZipFile": package})
    assert third["Version"] == 3  # numbers are never reused
    assert lam.list_layer_versions(LayerName="never-published")["LayerVersions"] == []


def test_layer_errors_match_aws(lam) -> None:  # type: ignore[no-untyped-def]
    lam.publish_layer_version(LayerName="errs", Content={"ZipFile": layer_zip({"python/x.py": ""})})
    assert error_of(lam.get_layer_version, LayerName="errs", VersionNumber=0) == (
        400, "InvalidParameterValueException", "Layer Version Cannot be less than 1")
    assert error_of(lam.get_layer_version, LayerName="errs", VersionNumber=-1) == (
        400, "InvalidParameterValueException", "Layer Version Cannot be less than 1")
    assert error_of(lam.get_layer_version, LayerName="errs", VersionNumber=2) == (
        404, "ResourceNotFoundException", "The resource you requested does not exist.")
    assert error_of(lam.get_layer_version, LayerName="nope", VersionNumber=1)[:2] == (404, "ResourceNotFoundException")
    assert error_of(lam.delete_layer_version, LayerName="errs", VersionNumber=0)[2] == "Layer Version Cannot be less than 1"
    status, code, message = error_of(lam.get_layer_version_by_arn, Arn=PREFIX + "layer:errs")
    assert (status, code) == (400, "ValidationException")
    assert message.startswith(f"1 validation error detected: Value '{PREFIX}layer:errs' at 'arn' failed to satisfy constraint: "
                              "Member must satisfy regular expression pattern: (arn:(aws[a-zA-Z-]*)?:lambda:")
    assert error_of(lam.get_layer_version_by_arn, Arn=PREFIX + "layer:errs:9")[:2] == (404, "ResourceNotFoundException")
    status, code, message = error_of(lam.publish_layer_version, LayerName="errs", Content={"ZipFile": b"x"},
                                     CompatibleRuntimes=["invalidruntime"], CompatibleArchitectures=["invalidarch"])
    assert (status, code) == (400, "ValidationException")
    assert message.startswith("2 validation errors detected: Value '[invalidruntime]' at 'compatibleRuntimes' failed to "
                              "satisfy constraint: Member must satisfy enum value set: [nodejs20.x, python3.14, ")
    assert message.endswith("; Value '[invalidarch]' at 'compatibleArchitectures' failed to satisfy constraint: Member "
                            "must satisfy constraint: [Member must satisfy enum value set: [x86_64, arm64], Member must not be null]")
    status, code, message = error_of(lam.list_layers, CompatibleArchitecture="archdoesnotexist")
    assert (status, code, message) == (400, "ValidationException", "1 validation error detected: Value 'archdoesnotexist' at "
                                       "'compatibleArchitecture' failed to satisfy constraint: Member must satisfy enum value set: [x86_64, arm64]")
    assert error_of(lam.list_layers, CompatibleRuntime="runtimedoesnotexist")[2].startswith(
        "1 validation error detected: Value 'runtimedoesnotexist' at 'compatibleRuntime' failed to satisfy constraint")
    assert error_of(lam.publish_layer_version, LayerName="errs", Content={"ZipFile": b"not a zip"})[:2] == (
        400, "InvalidParameterValueException")
    assert [v["Version"] for v in lam.list_layer_versions(LayerName="errs")["LayerVersions"]] == [1]  # nothing half-stored


def test_function_imports_from_layers_in_order(lam) -> None:  # type: ignore[no-untyped-def]
    first = lam.publish_layer_version(LayerName="base", Content={"ZipFile": layer_zip(
        {"python/shared.py": "VALUE = 'from-base'\n", "python/only_a.py": "VALUE = 'only-a'\n"})})
    second = lam.publish_layer_version(LayerName="override", Content={"ZipFile": layer_zip(
        {"python/shared.py": "VALUE = 'from-override'\n",
         "python/lib/python3.12/site-packages/sitepkg.py": "VALUE = 'site'\n"})})
    arns = [first["LayerVersionArn"], second["LayerVersionArn"]]
    created = create(lam, "layered", {"app.py": LAYER_APP}, Layers=arns)
    expected = [{"Arn": first["LayerVersionArn"], "CodeSize": first["Content"]["CodeSize"]},
                {"Arn": second["LayerVersionArn"], "CodeSize": second["Content"]["CodeSize"]}]
    assert created["Layers"] == expected
    assert lam.get_function(FunctionName="layered")["Configuration"]["Layers"] == expected
    response, body = invoke_json(lam, "layered")
    assert "FunctionError" not in response, body
    assert body["shared"] == "from-override" and body["only_a"] == "only-a" and body["sitepkg"] == "site"
    assert body["path"] == ["/opt/python/lib/python3.12/site-packages", "/opt/python"]
    assert body["opt_writable"] is False
    assert body["files"] == ["lib", "only_a.py", "shared.py"]

    # the other order: the base layer's module wins
    lam.update_function_configuration(FunctionName="layered", Layers=list(reversed(arns)))
    lam.get_waiter("function_updated_v2").wait(FunctionName="layered", WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})
    assert invoke_json(lam, "layered")[1]["shared"] == "from-base"
    # no layers: the import fails as on Lambda
    lam.update_function_configuration(FunctionName="layered", Layers=[])
    lam.get_waiter("function_updated_v2").wait(FunctionName="layered", WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})
    assert "Layers" not in lam.get_function_configuration(FunctionName="layered")
    response, body = invoke_json(lam, "layered")
    assert response.get("FunctionError") == "Unhandled" and body["errorType"] == "Runtime.ImportModuleError", body


def test_function_layer_errors_match_aws(lam) -> None:  # type: ignore[no-untyped-def]
    one = lam.publish_layer_version(LayerName="same", Content={"ZipFile": layer_zip({"python/s.py": ""})})
    two = lam.publish_layer_version(LayerName="same", Content={"ZipFile": layer_zip({"python/s.py": ""})})
    code = {"ZipFile": make_zip({"app.py": "def handler(e, c):\n    return 1\n"})}
    base = dict(FunctionName="bad-layers", Runtime="python3.12", Role=ROLE, Handler="app.handler", Code=code)
    assert error_of(lam.create_function, **base, Layers=[one["LayerVersionArn"], two["LayerVersionArn"]]) == (
        400, "InvalidParameterValueException",
        "Two different versions of the same layer are not allowed to be referenced in the same function. "
        f"{one['LayerVersionArn']} and {two['LayerVersionArn']} are versions of the same layer.")
    assert error_of(lam.create_function, **base, Layers=[PREFIX + "layer:doesnotexist:1"]) == (
        400, "InvalidParameterValueException", f"Layer version {PREFIX}layer:doesnotexist:1 does not exist.")
    assert error_of(lam.create_function, **base, Layers=[PREFIX + "layer:same:9"])[2] == (
        f"Layer version {PREFIX}layer:same:9 does not exist.")
    status, code_, message = error_of(lam.create_function, **base, Layers=[PREFIX + "layer:same"])
    assert (status, code_) == (400, "ValidationException")
    assert message.startswith(f"1 validation error detected: Value '[{PREFIX}layer:same]' at 'layers' failed to satisfy "
                              "constraint: Member must satisfy constraint: [Member must have length less than or equal to 2048")
    assert error_of(lam.create_function, **base, Layers=["arn:aws:lambda:eu-west-1:000000000000:layer:same:1"]) == (
        400, "InvalidParameterValueException",
        "Layers are not in the same region as the function. Layers are expected to be in region us-east-1.")
    six = [lam.publish_layer_version(LayerName=f"six-{i}", Content={"ZipFile": layer_zip({f"python/m{i}.py": ""})})["LayerVersionArn"]
           for i in range(6)]
    assert error_of(lam.create_function, **base, Layers=six) == (
        400, "InvalidParameterValueException", "Cannot reference more than 5 layers.")
    assert error_of(lam.get_function, FunctionName="bad-layers")[0] == 404  # nothing was created


def test_snapstart_version_with_a_layer_restores_after_the_layer_is_deleted(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    layer = lam.publish_layer_version(LayerName="snap-layer", Content={"ZipFile": layer_zip(
        {"python/lib/python3.11/site-packages/snapdep.py": "import uuid\nTOKEN = uuid.uuid4().hex\n"})})
    app = ("import snapdep\n\n\ndef handler(event, context):\n"
           "    return {'token': snapdep.TOKEN, 'file': snapdep.__file__}\n")
    create(lam, "snap-layered", {"app.py": app}, Runtime="python3.11", SnapStart=SNAPSTART,
           Layers=[layer["LayerVersionArn"]])
    publish(lam, "snap-layered")
    lam.delete_layer_version(LayerName="snap-layer", VersionNumber=layer["Version"])
    assert lam.list_layer_versions(LayerName="snap-layer")["LayerVersions"] == []
    response, body = invoke_json(lam, "snap-layered", Qualifier="1", LogType="Tail")
    assert "FunctionError" not in response, body
    assert_restored(response["LogResult"])
    assert body["file"] == "/opt/python/lib/python3.11/site-packages/snapdep.py"
    # the token was drawn at init, before the snapshot: a second restored copy has the same one
    config = lam.get_function_configuration(FunctionName="snap-layered", Qualifier="1")
    assert config["Layers"] == [{"Arn": layer["LayerVersionArn"], "CodeSize": layer["Content"]["CodeSize"]}]


def test_layers_through_the_aws_cli(server: ServerHandle, tmp_path: Path) -> None:
    (tmp_path / "layer.zip").write_bytes(layer_zip({"python/clidep.py": "VALUE = 'cli-layer'\n"}))
    (tmp_path / "fn.zip").write_bytes(make_zip({"app.py": "import clidep\n\n\ndef handler(e, c):\n    return clidep.VALUE\n"}))
    published = aws(server, tmp_path, "publish-layer-version", "--layer-name", "cli-layer", "--zip-file", "fileb://layer.zip",
                    "--compatible-runtimes", "python3.12", "--compatible-architectures", "arm64")
    assert (published["Version"], published["CompatibleArchitectures"]) == (1, ["arm64"])
    created = aws(server, tmp_path, "create-function", "--function-name", "cli-layered", "--runtime", "python3.12",
                  "--role", ROLE, "--handler", "app.handler", "--zip-file", "fileb://fn.zip",
                  "--layers", published["LayerVersionArn"], "--architectures", "arm64")
    assert created["Layers"][0]["Arn"] == published["LayerVersionArn"]
    assert created["Architectures"] == ["arm64"]
    aws(server, tmp_path, "wait", "function-active-v2", "--function-name", "cli-layered")
    aws(server, tmp_path, "invoke", "--function-name", "cli-layered", "out.json")
    assert (tmp_path / "out.json").read_text() == '"cli-layer"'
    listed = aws(server, tmp_path, "list-layers", "--compatible-architecture", "arm64")
    assert [item["LayerName"] for item in listed["Layers"]] == ["cli-layer"]
    versions = aws(server, tmp_path, "list-layer-versions", "--layer-name", "cli-layer")
    assert [v["Version"] for v in versions["LayerVersions"]] == [1]
    got = aws(server, tmp_path, "get-layer-version-by-arn", "--arn", published["LayerVersionArn"])
    assert got["Content"]["CodeSha256"] == published["Content"]["CodeSha256"]
    aws(server, tmp_path, "delete-layer-version", "--layer-name", "cli-layer", "--version-number", "1")
    assert aws(server, tmp_path, "list-layer-versions", "--layer-name", "cli-layer")["LayerVersions"] == []


@pytest.fixture(scope="module")
def restartable(processes, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    require_root()
    yield from run_server(processes, tmp_path_factory.mktemp("layers-restart"), ["--keep-alive", "60"])


def test_layers_and_tags_survive_a_crash_and_rebuild_their_trees(restartable: ServerHandle) -> None:
    lam = restartable.client()
    first = lam.publish_layer_version(LayerName="durable", Content={"ZipFile": layer_zip(
        {"python/shared.py": "VALUE = 'one'\n", "python/only_a.py": "VALUE = 'a'\n"})})
    second = lam.publish_layer_version(LayerName="durable-top", Content={"ZipFile": layer_zip(
        {"python/shared.py": "VALUE = 'two'\n", "python/lib/python3.12/site-packages/sitepkg.py": "VALUE = 's'\n"})})
    create(lam, "durable-fn", {"app.py": LAYER_APP}, Layers=[first["LayerVersionArn"], second["LayerVersionArn"]],
           Tags={"kept": "yes"})
    assert invoke_json(lam, "durable-fn")[1]["shared"] == "two"
    before = lam.get_function(FunctionName="durable-fn")
    restartable.stop(signal.SIGKILL)
    # derived trees (extracted layers, the merged /opt) are rebuilt from the stored packages
    sandbox = Path(restartable.extra_args[restartable.extra_args.index("--sandbox-dir") + 1])
    trees = [p for p in (sandbox / "code").iterdir() if p.name.isdigit()]
    assert any(p.name.startswith("opt-") for tree in trees for p in tree.iterdir())
    for tree in trees:
        remove_tree(tree)
    restartable.start()
    lam = restartable.client()
    after = lam.get_function(FunctionName="durable-fn")
    assert (after["Configuration"]["Layers"], after["Tags"]) == (before["Configuration"]["Layers"], {"kept": "yes"})
    assert [v["Version"] for v in lam.list_layer_versions(LayerName="durable")["LayerVersions"]] == [1]
    response, body = invoke_json(lam, "durable-fn")
    assert "FunctionError" not in response, body
    assert (body["shared"], body["only_a"], body["sitepkg"]) == ("two", "a", "s")
