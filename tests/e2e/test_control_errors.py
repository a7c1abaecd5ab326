"""Bad input: each request gets Lambda's precise error and changes nothing — no function, version
or alias appears or changes, and no code package (zip or extracted tree) is left on disk."""

from __future__ import annotations

import base64
import io
import json
import struct
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.conftest import ACCESS_KEY, ROLE, SECRET_KEY, create, make_zip
from tests.e2e.test_control_plane import ARN, assert_error, echo_code, not_found, without_metadata
from tests.unit.test_artifacts import with_encryption_flag

UNZIP = "Could not unzip uploaded file. Please check your file, then try to upload again."
CREATE_NAME_PATTERN = (
    r"(arn:(aws[a-zA-Z-]*)?:lambda:)?((eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:)?(\d{12}:)?(function:)?"
    r"([a-zA-Z0-9-_]+)(:(\$LATEST|[a-zA-Z0-9-_]+))?"
)
REF_NAME_PATTERN = (
    r"(arn:(aws[a-zA-Z-]*)?:lambda:)?((eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:)?(\d{12}:)?(function:)?"
    r"([a-zA-Z0-9-_\.]+)(:(\$LATEST(\.PUBLISHED)?|[a-zA-Z0-9-_]+))?"
)
RUNTIMES = "[python3.11, python3.12, python3.13, provided.al2023, provided.al2]"


@pytest.fixture(scope="module")
def loose(server):  # type: ignore[no-untyped-def]
    """A client that lets out-of-range values through to the server (no botocore validation)."""
    return server.client(parameter_validation=False)


@pytest.fixture(scope="module")
def base(lam):  # type: ignore[no-untyped-def]
    """One settled function with a version and an alias, which bad requests must not touch."""
    create(lam, "base", echo_code())
    lam.publish_version(FunctionName="base")
    lam.create_alias(FunctionName="base", Name="live", FunctionVersion="1")
    return "base"


def world(lam, server) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Everything a request could change: every version's config, base's aliases, stored packages."""
    versions = [f for page in lam.get_paginator("list_functions").paginate(FunctionVersion="ALL") for f in page["Functions"]]
    sandbox = Path(server.extra_args[server.extra_args.index("--sandbox-dir") + 1])
    return {
        "versions": sorted(versions, key=lambda f: f["FunctionArn"]),
        "base": without_metadata(lam.get_function_configuration(FunctionName="base")),
        "aliases": lam.list_aliases(FunctionName="base")["Aliases"],
        "zips": sorted(p.name for p in (server.data_dir / "code").iterdir()),
        "trees": sorted(p.name for p in (sandbox / "code").iterdir()),
    }


@pytest.fixture
def unchanged(lam, server, base):  # type: ignore[no-untyped-def]
    """Asserts, after the test, that the server's state is exactly what it was before."""
    before = world(lam, server)
    yield
    assert world(lam, server) == before


def zip_with(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(zipfile.ZipInfo(name), data)
    return buf.getvalue()


def zip_bomb(unzipped_mb: int = 260) -> bytes:
    """app.py plus an entry of `unzipped_mb` MB of zeros (compresses about 1000:1), streamed."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("app.py", "def handler(event, context):\n    return 1\n")
        with archive.open("zeros.bin", "w") as out:
            chunk = bytes(1 << 20)
            for _ in range(unzipped_mb):
                out.write(chunk)
    return buf.getvalue()


def lying_zip() -> bytes:
    """The zip bomb with both headers of zeros.bin claiming it unzips to 10 bytes."""
    data = bytearray(zip_bomb())
    info = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo("zeros.bin")
    struct.pack_into("<I", data, info.header_offset + 22, 10)  # local header: uncompressed size
    entry = data.index(b"PK\x01\x02")
    while data[entry + 46:entry + 46 + struct.unpack_from("<H", data, entry + 28)[0]] != b"zeros.bin":
        entry = data.index(b"PK\x01\x02", entry + 4)
    struct.pack_into("<I", data, entry + 24, 10)  # central directory: uncompressed size
    lied = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo("zeros.bin")
    assert lied.file_size == 10
    return bytes(data)


def create_with(lam, package: bytes, name: str = "victim", **kwargs: Any) -> None:  # type: ignore[no-untyped-def]
    lam.create_function(FunctionName=name, Runtime="python3.12", Role=ROLE, Handler="app.handler",
                        Code={"ZipFile": package}, **kwargs)


GOOD = make_zip(echo_code("good"))


@pytest.mark.parametrize(
    ("package", "message"),
    [
        pytest.param(b"this is not a zip file", UNZIP, id="not-a-zip"),
        pytest.param(GOOD[: len(GOOD) // 2], UNZIP, id="truncated"),
        pytest.param(zip_with([("app.py", b"x"), ("../evil.py", b"x")]), f"{UNZIP} (unsafe entry path '../evil.py')",
                     id="dotdot-entry"),
        pytest.param(zip_with([("app.py", b"x"), ("lib/../../evil.py", b"x")]),
                     f"{UNZIP} (unsafe entry path 'lib/../../evil.py')", id="nested-dotdot-entry"),
        pytest.param(zip_with([("app.py", b"x"), ("/etc/evil.py", b"x")]), f"{UNZIP} (unsafe entry path '/etc/evil.py')",
                     id="absolute-entry"),
        pytest.param(with_encryption_flag(zip_with([("app.py", b"x"), ("secret.py", b"X = 1")]), "secret.py"),
                     f"{UNZIP} (entry 'secret.py' is encrypted; encrypted zip entries are not supported)",
                     id="encrypted-entry"),
    ],
)
def test_create_rejects_bad_packages(lam, unchanged, package: bytes, message: str) -> None:
    with pytest.raises(ClientError) as exc:
        create_with(lam, package)
    assert_error(exc, 400, "InvalidParameterValueException", message)


def test_zip_bomb_is_rejected_quickly_without_extracting(lam, unchanged) -> None:
    bomb = zip_bomb()
    assert len(bomb) < 1_000_000
    started = time.monotonic()
    with pytest.raises(ClientError) as exc:
        create_with(lam, bomb)
    assert time.monotonic() - started < 5
    assert_error(exc, 400, "InvalidParameterValueException", "Unzipped size must be smaller than 262144000 bytes")


def test_zip_lying_about_its_size_is_rejected(lam, unchanged) -> None:
    with pytest.raises(ClientError) as exc:
        create_with(lam, lying_zip())
    assert_error(exc, 400, "InvalidParameterValueException", UNZIP)  # the CRC check catches the short read


def test_update_code_rejects_bad_packages(lam, unchanged) -> None:
    encrypted = with_encryption_flag(make_zip(echo_code("encrypted")), "app.py")
    for package, message in [(b"junk", UNZIP),
                             (encrypted, f"{UNZIP} (entry 'app.py' is encrypted; encrypted zip entries are not supported)")]:
        with pytest.raises(ClientError) as exc:
            lam.update_function_code(FunctionName="base", ZipFile=package)
        assert_error(exc, 400, "InvalidParameterValueException", message)


def test_rejected_update_with_new_code_leaves_no_package(lam, unchanged) -> None:
    with pytest.raises(ClientError) as exc:
        lam.update_function_code(FunctionName="base", ZipFile=make_zip(echo_code("never-stored")),
                                 RevisionId="00000000-0000-0000-0000-000000000000")
    assert exc.value.response["Error"]["Code"] == "PreconditionFailedException"


@pytest.mark.parametrize(
    ("kwargs", "code", "message"),
    [
        pytest.param(dict(Runtime="python2.7"), "InvalidParameterValueException",
                     "The runtime parameter of python2.7 is no longer supported for creating or updating AWS Lambda "
                     "functions. We recommend you use a supported runtime while creating or updating functions.",
                     id="python2.7"),
        pytest.param(dict(Runtime="nodejs20.x"), "InvalidParameterValueException",
                     f"Value nodejs20.x at 'runtime' failed to satisfy constraint: Member must satisfy enum value set: "
                     f"{RUNTIMES} or be a valid ARN", id="nodejs"),
        pytest.param(dict(Runtime="PYTHON3.12"), "InvalidParameterValueException",
                     f"Value PYTHON3.12 at 'runtime' failed to satisfy constraint: Member must satisfy enum value set: "
                     f"{RUNTIMES} or be a valid ARN", id="uppercase-runtime"),
        pytest.param(dict(MemorySize=127), "ValidationException",
                     "1 validation error detected: Value '127' at 'memorySize' failed to satisfy constraint: "
                     "Member must have value greater than or equal to 128", id="memory-low"),
        pytest.param(dict(MemorySize=32769), "ValidationException",
                     "1 validation error detected: Value '32769' at 'memorySize' failed to satisfy constraint: "
                     "Member must have value less than or equal to 32768", id="memory-high"),
        pytest.param(dict(MemorySize=10241), "ValidationException",
                     "'MemorySize' value failed to satisfy constraint: Member must have value less than or equal to 10240",
                     id="memory-over-lambdas-quota"),
        pytest.param(dict(Timeout=0), "ValidationException",
                     "1 validation error detected: Value '0' at 'timeout' failed to satisfy constraint: "
                     "Member must have value greater than or equal to 1", id="timeout-low"),
        pytest.param(dict(Timeout=901), "ValidationException",
                     "1 validation error detected: Value '901' at 'timeout' failed to satisfy constraint: "
                     "Member must have value less than or equal to 900", id="timeout-high"),
        pytest.param(dict(EphemeralStorage={"Size": 10241}), "ValidationException",
                     "1 validation error detected: Value '10241' at 'ephemeralStorage.size' failed to satisfy "
                     "constraint: Member must have value less than or equal to 10240", id="storage-high"),
        pytest.param(dict(SnapStart={"ApplyOn": "invalidOption"}), "ValidationException",
                     "1 validation error detected: Value 'invalidOption' at 'snapStart.applyOn' failed to satisfy "
                     "constraint: Member must satisfy enum value set: [PublishedVersions, None]", id="snapstart"),
        pytest.param(dict(Role="r1"), "ValidationException",
                     "1 validation error detected: Value 'r1' at 'role' failed to satisfy constraint: Member must "
                     r"satisfy regular expression pattern: arn:(aws[a-zA-Z-]*)?:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+",
                     id="role"),
    ],
)
def test_create_rejects_bad_configuration(loose, unchanged, kwargs: dict[str, Any], code: str, message: str) -> None:
    params: dict[str, Any] = dict(FunctionName="victim", Runtime="python3.12", Role=ROLE, Handler="app.handler",
                                  Code={"ZipFile": GOOD})
    params.update(kwargs)
    with pytest.raises(ClientError) as exc:
        loose.create_function(**params)
    assert_error(exc, 400, code, message)


@pytest.mark.parametrize(
    ("kwargs", "code", "message"),
    [
        pytest.param(dict(MemorySize=40000), "ValidationException",
                     "1 validation error detected: Value '40000' at 'memorySize' failed to satisfy constraint: "
                     "Member must have value less than or equal to 32768", id="memory"),
        pytest.param(dict(Runtime="python2.7"), "InvalidParameterValueException",
                     "The runtime parameter of python2.7 is no longer supported for creating or updating AWS Lambda "
                     "functions. We recommend you use a supported runtime while creating or updating functions.",
                     id="runtime"),
    ],
)
def test_update_configuration_rejects_bad_values(loose, unchanged, kwargs: dict[str, Any], code: str, message: str) -> None:
    with pytest.raises(ClientError) as exc:
        loose.update_function_configuration(FunctionName="base", **kwargs)
    assert_error(exc, 400, code, message)


def test_invalid_function_names(lam, unchanged) -> None:
    with pytest.raises(ClientError) as exc:
        create_with(lam, GOOD, name="my-function!")
    assert_error(exc, 400, "ValidationException",
                 "1 validation error detected: Value 'my-function!' at 'functionName' failed to satisfy constraint: "
                 f"Member must satisfy regular expression pattern: {CREATE_NAME_PATTERN}")
    long_name = "a" * 65
    with pytest.raises(ClientError) as exc:
        create_with(lam, GOOD, name=long_name)
    assert_error(exc, 400, "InvalidParameterValueException",
                 f"1 validation error detected: Value '{long_name}' at 'functionName' failed to satisfy constraint: "
                 "Member must have length less than or equal to 64")
    with pytest.raises(ClientError) as exc:
        lam.get_function(FunctionName=long_name)
    assert_error(exc, 404, "ResourceNotFoundException", not_found(long_name))
    with pytest.raises(ClientError) as exc:
        lam.get_function(FunctionName="my-function!")
    assert_error(exc, 400, "ValidationException",
                 "1 validation error detected: Value 'my-function!' at 'functionName' failed to satisfy constraint: "
                 f"Member must satisfy regular expression pattern: {REF_NAME_PATTERN}")
    with pytest.raises(ClientError) as exc:
        lam.get_function(FunctionName="base", Qualifier="invalid!")
    assert_error(exc, 400, "ValidationException",
                 "1 validation error detected: Value 'invalid!' at 'qualifier' failed to satisfy constraint: "
                 r"Member must satisfy regular expression pattern: \$(LATEST(\.PUBLISHED)?)|[a-zA-Z0-9-_$]+")
    with pytest.raises(ClientError) as exc:
        lam.get_function(FunctionName=ARN + "base:1", Qualifier="$LATEST")
    assert_error(exc, 400, "InvalidParameterValueException",
                 "The derived qualifier from the function name does not match the specified qualifier.")


def test_invalid_alias_names(lam, unchanged) -> None:
    pattern = "Member must satisfy regular expression pattern: (?!^[0-9]+$)([a-zA-Z0-9-_]+)"
    for name, constraint in [("2024", pattern), ("bad!", pattern), ("a" * 129, "Member must have length less than or equal to 128")]:
        with pytest.raises(ClientError) as exc:
            lam.create_alias(FunctionName="base", Name=name, FunctionVersion="1")
        assert_error(exc, 400, "ValidationException",
                     f"1 validation error detected: Value '{name}' at 'name' failed to satisfy constraint: {constraint}")


def test_unknown_versions_and_aliases(lam, unchanged) -> None:
    calls = [
        (lambda: lam.get_function(FunctionName="base", Qualifier="1221"), not_found("base", "1221")),
        (lambda: lam.get_function_configuration(FunctionName="base", Qualifier="1221"), not_found("base", "1221")),
        (lambda: lam.get_function(FunctionName="base", Qualifier="nope"), not_found("base", "nope")),
        (lambda: lam.get_function(FunctionName="base", Qualifier="$latest"), not_found("base", "$latest")),
        (lambda: lam.invoke(FunctionName="base", Qualifier="non-existent-alias"), not_found("base", "non-existent-alias")),
        (lambda: lam.invoke(FunctionName="doesnotexist"), not_found("doesnotexist", "$LATEST")),
        (lambda: lam.get_alias(FunctionName="base", Name="nope"), f"Cannot find alias arn: {ARN}base:nope"),
        (lambda: lam.create_alias(FunctionName="base", Name="x", FunctionVersion="9"), not_found("base", "9")),
        (lambda: lam.get_function(FunctionName="doesnotexist"), not_found("doesnotexist")),
        (lambda: lam.get_function_configuration(FunctionName="doesnotexist"), not_found("doesnotexist")),
        (lambda: lam.get_function_concurrency(FunctionName="doesnotexist"), not_found("doesnotexist")),
        (lambda: lam.publish_version(FunctionName="doesnotexist"), not_found("doesnotexist")),
        (lambda: lam.list_versions_by_function(FunctionName="doesnotexist"), not_found("doesnotexist")),
        (lambda: lam.list_aliases(FunctionName="doesnotexist"), not_found("doesnotexist")),
        (lambda: lam.update_function_code(FunctionName="doesnotexist", ZipFile=GOOD), not_found("doesnotexist")),
        (lambda: lam.update_function_configuration(FunctionName="doesnotexist", Timeout=4), not_found("doesnotexist")),
        (lambda: lam.delete_function(FunctionName="doesnotexist"), not_found("doesnotexist")),
        (lambda: lam.delete_alias(FunctionName="doesnotexist", Name="live"), not_found("doesnotexist")),
    ]
    for call, message in calls:
        with pytest.raises(ClientError) as exc:
            call()
        assert_error(exc, 404, "ResourceNotFoundException", message)


def test_duplicate_create_is_a_conflict_and_keeps_the_original(lam, unchanged) -> None:
    for package in (GOOD, make_zip(echo_code("different-code"))):
        with pytest.raises(ClientError) as exc:
            create_with(lam, package, name="base")
        assert_error(exc, 409, "ResourceConflictException", "Function already exist: base")


def test_version_conflicts(lam, unchanged) -> None:
    with pytest.raises(ClientError) as exc:
        lam.publish_version(FunctionName="base", CodeSha256="wrong")
    assert exc.value.response["Error"]["Code"] == "InvalidParameterValueException"
    with pytest.raises(ClientError) as exc:
        lam.publish_version(FunctionName="base", RevisionId="00000000-0000-0000-0000-000000000000")
    assert exc.value.response["Error"]["Code"] == "PreconditionFailedException"
    with pytest.raises(ClientError) as exc:
        lam.delete_function(FunctionName="base", Qualifier="$LATEST")
    assert exc.value.response["Error"]["Code"] == "InvalidParameterValueException"
    with pytest.raises(ClientError) as exc:
        lam.delete_function(FunctionName="base", Qualifier="1")  # the alias "live" points at it
    assert_error(exc, 409, "ResourceConflictException",
                 "Unable to delete version because the following aliases reference it: [live]")


def signed_post(server, path: str, body: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:  # type: ignore[no-untyped-def]
    """POST raw bytes with a valid SigV4 signature; returns (status, headers, JSON body)."""
    url = server.endpoint + path
    request = AWSRequest(method="POST", url=url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "lambda", "us-east-1").add_auth(request)
    prepared = urllib.request.Request(url, data=body, headers=dict(request.headers.items()), method="POST")
    try:
        with urllib.request.urlopen(prepared, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read() or b"{}")


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\x87\x99 binary"], ids=["syntax", "not-an-object", "binary"])
def test_malformed_json_body(server, unchanged, body: bytes) -> None:
    status, headers, payload = signed_post(server, "/2015-03-31/functions", body)
    assert (status, headers["x-amzn-ErrorType"]) == (400, "InvalidRequestContentException")
    assert payload["Type"] == "User"
    assert payload["message"].startswith("Could not parse request body into json: ")


def test_valid_signed_raw_request_is_accepted(server, lam) -> None:
    """Control for the raw-request helper: the same path with a proper body does create."""
    body = json.dumps({"FunctionName": "raw-created", "Runtime": "python3.12", "Role": ROLE, "Handler": "app.handler",
                       "Code": {"ZipFile": base64.b64encode(GOOD).decode()}}).encode()
    status, _, payload = signed_post(server, "/2015-03-31/functions", body)
    assert (status, payload["FunctionName"], payload["State"]) == (201, "raw-created", "Pending")
    lam.delete_function(FunctionName="raw-created")
