"""Control plane through real boto3 against a real server: every operation, its exact response
shape (as recorded from AWS, see the shapes digest), and the three boto3 waiters.

The helpers at the top are shared by the other ``test_control_*`` modules.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import urllib.request
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import ROLE, create, invoke_json, make_zip

ARN = "arn:aws:lambda:us-east-1:000000000000:function:"
LAST_MODIFIED_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000$")
STATE_KEYS = {"State", "StateReason", "StateReasonCode", "LastUpdateStatus", "LastUpdateStatusReason",
              "LastUpdateStatusReasonCode"}
ALWAYS_PRESENT = {
    "TracingConfig": {"Mode": "PassThrough"},
    "PackageType": "Zip",
    "Architectures": ["x86_64"],
}
FAST = {"Delay": 0.1, "MaxAttempts": 300}

ECHO = """
import os, sys
def handler(event, context):
    return {"event": event, "version": "%d.%d" % sys.version_info[:2], "env": os.environ.get("ENV_A"),
            "memory": context.memory_limit_in_mb, "tag": TAG}
TAG = "v1"
"""


def echo_code(tag: str = "v1") -> dict[str, str]:
    """A handler module whose answer names its code version (`tag`)."""
    return {"app.py": ECHO.replace('TAG = "v1"', f"TAG = {tag!r}")}


def deploy(lam, name: str, package: bytes, **kwargs: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """CreateFunction with exactly these zip bytes, then wait for Active. (Use it whenever a test
    compares hashes: `make_zip` stamps entries with the current time, so two calls can differ.)"""
    created = lam.create_function(FunctionName=name, Runtime="python3.12", Role=ROLE, Handler="app.handler",
                                  Code={"ZipFile": package}, **kwargs)
    lam.get_waiter("function_active_v2").wait(FunctionName=name, WaiterConfig=FAST)
    return created


def sha256_b64(data: bytes) -> str:
    """Lambda's CodeSha256: base64 of the raw SHA-256 digest of the zip bytes."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def is_uuid(value: str) -> bool:
    return str(uuid.UUID(value)) == value


def error_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[int, str, str]:
    """(HTTP status, error code, message) of a botocore ClientError."""
    response: dict[str, Any] = exc.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"], response["Error"]["Message"]


def assert_error(exc: pytest.ExceptionInfo[ClientError], status: int, code: str, message: str | re.Pattern[str]) -> None:
    """The error matches status, code and message (exact text, or a regex), with Lambda's body members:
    ResourceNotFound uses ``Message``, the other User errors ``message`` plus ``Type: User``."""
    got_status, got_code, got_message = error_of(exc)
    assert (got_status, got_code) == (status, code), got_message
    if isinstance(message, str):
        assert got_message == message
    else:
        assert message.fullmatch(got_message), got_message
    body = exc.value.response
    if code == "ResourceNotFoundException":
        assert body.get("Message") == got_message and body.get("Type") == "User"
    elif code in {"InvalidParameterValueException", "ResourceConflictException", "PreconditionFailedException",
                  "InvalidRequestContentException"}:
        assert body.get("message") == got_message and body.get("Type") == "User"


def not_found(name: str, qualifier: str | None = None) -> str:
    return f"Function not found: {ARN}{name}" + (f":{qualifier}" if qualifier else "")


def wait_updated(lam, name: str) -> None:  # type: ignore[no-untyped-def]
    lam.get_waiter("function_updated_v2").wait(FunctionName=name, WaiterConfig=FAST)


def without_metadata(response: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in response.items() if k != "ResponseMetadata"}


# -- CreateFunction / GetFunction ------------------------------------------------------------


def test_create_function_with_every_option_echoes_it_and_settles(lam) -> None:
    package = make_zip(echo_code())
    created = lam.create_function(
        FunctionName="full", Runtime="python3.13", Role=ROLE, Handler="app.handler", Code={"ZipFile": package},
        MemorySize=256, Timeout=10, Description="everything set", Environment={"Variables": {"ENV_A": "from-env"}},
        EphemeralStorage={"Size": 512}, SnapStart={"ApplyOn": "PublishedVersions"}, Publish=True,
    )
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert created["FunctionArn"] == ARN + "full"  # unqualified even with Publish=True
    assert created["Version"] == "1"
    assert (created["State"], created["StateReason"], created["StateReasonCode"]) == (
        "Pending", "The function is being created.", "Creating")
    assert not {"LastUpdateStatus", "LastUpdateStatusReason", "LastUpdateStatusReasonCode"} & created.keys()
    assert created["CodeSha256"] == sha256_b64(package)
    assert created["CodeSize"] == len(package)
    assert LAST_MODIFIED_RE.match(created["LastModified"])
    stamp = dt.datetime.strptime(created["LastModified"], "%Y-%m-%dT%H:%M:%S.%f%z")
    assert abs((dt.datetime.now(dt.timezone.utc) - stamp).total_seconds()) < 60  # UTC, now
    assert is_uuid(created["RevisionId"])
    expected = {
        "FunctionName": "full", "Runtime": "python3.13", "Role": ROLE, "Handler": "app.handler", "MemorySize": 256,
        "Timeout": 10, "Description": "everything set", "Environment": {"Variables": {"ENV_A": "from-env"}},
        "EphemeralStorage": {"Size": 512}, "SnapStart": {"ApplyOn": "PublishedVersions", "OptimizationStatus": "Off"},
        "LoggingConfig": {"LogFormat": "Text", "LogGroup": "/aws/lambda/full"}, **ALWAYS_PRESENT,
    }
    assert {k: created[k] for k in expected} == expected

    lam.get_waiter("function_active_v2").wait(FunctionName="full", WaiterConfig=FAST)
    config = lam.get_function(FunctionName="full")["Configuration"]
    assert (config["State"], config["LastUpdateStatus"]) == ("Active", "Successful")
    assert not {"StateReason", "StateReasonCode", "LastUpdateStatusReason"} & config.keys()
    assert config["RevisionId"] != created["RevisionId"]  # Pending -> Active mints a new revision
    assert (config["FunctionArn"], config["Version"]) == (ARN + "full", "$LATEST")
    assert config["SnapStart"] == {"ApplyOn": "PublishedVersions", "OptimizationStatus": "Off"}  # never On for $LATEST
    assert {k: config[k] for k in expected} == expected

    lam.get_waiter("published_version_active").wait(FunctionName="full", Qualifier="1", WaiterConfig={"Delay": 0.1, "MaxAttempts": 1800})  # a SnapStart publish: init + checkpoint, slow on a busy host
    version = lam.get_function_configuration(FunctionName="full", Qualifier="1")
    assert (version["FunctionArn"], version["Version"], version["State"]) == (ARN + "full:1", "1", "Active")
    assert version["CodeSha256"] == created["CodeSha256"]

    _, body = invoke_json(lam, "full", {"k": 1})
    assert body == {"event": {"k": 1}, "version": "3.13", "env": "from-env", "memory": "256", "tag": "v1"}


@pytest.mark.parametrize("runtime", ["python3.11", "python3.12", "python3.13"])
def test_create_defaults_for_each_runtime(lam, runtime: str) -> None:
    name = "defaults-" + runtime.replace(".", "")
    created = create(lam, name, echo_code(), Runtime=runtime)
    assert created["Runtime"] == runtime
    defaults = {"MemorySize": 128, "Timeout": 3, "Description": "", "EphemeralStorage": {"Size": 512},
                "SnapStart": {"ApplyOn": "None", "OptimizationStatus": "Off"}, **ALWAYS_PRESENT}
    assert {k: created[k] for k in defaults} == defaults
    assert "Environment" not in created  # absent unless configured
    _, body = invoke_json(lam, name)
    assert body["version"] == runtime.removeprefix("python")


def test_empty_environment_is_echoed(lam) -> None:
    created = create(lam, "empty-env", echo_code(), Environment={"Variables": {}})
    assert created["Environment"] == {"Variables": {}}
    assert lam.get_function_configuration(FunctionName="empty-env")["Environment"] == {"Variables": {}}


def test_get_function_qualifiers_code_location_and_concurrency(lam) -> None:
    package = make_zip(echo_code())
    deploy(lam, "getter", package)
    lam.publish_version(FunctionName="getter")
    lam.create_alias(FunctionName="getter", Name="live", FunctionVersion="1")

    plain = lam.get_function(FunctionName="getter")
    assert (plain["Configuration"]["FunctionArn"], plain["Configuration"]["Version"]) == (ARN + "getter", "$LATEST")
    assert "Concurrency" not in plain and "Tags" not in plain
    assert plain["Code"]["RepositoryType"] == "S3"
    with urllib.request.urlopen(plain["Code"]["Location"], timeout=10) as download:  # presigned: no SigV4 needed
        assert download.read() == package

    latest = lam.get_function(FunctionName="getter", Qualifier="$LATEST")["Configuration"]
    assert (latest["FunctionArn"], latest["Version"]) == (ARN + "getter:$LATEST", "$LATEST")
    by_alias = lam.get_function(FunctionName="getter", Qualifier="live")["Configuration"]
    assert (by_alias["FunctionArn"], by_alias["Version"]) == (ARN + "getter:live", "1")
    by_arn = lam.get_function(FunctionName=ARN + "getter:1")["Configuration"]
    assert (by_arn["FunctionArn"], by_arn["Version"]) == (ARN + "getter:1", "1")

    configuration = without_metadata(lam.get_function_configuration(FunctionName="getter", Qualifier="live"))
    assert configuration == by_alias

    lam.put_function_concurrency(FunctionName="getter", ReservedConcurrentExecutions=3)
    assert lam.get_function(FunctionName="getter")["Concurrency"] == {"ReservedConcurrentExecutions": 3}


# -- updates ---------------------------------------------------------------------------------


def test_update_function_code_goes_in_progress_then_successful(lam) -> None:
    create(lam, "coder", echo_code("v1"))
    before = lam.get_function_configuration(FunctionName="coder")
    package = make_zip(echo_code("v2"))
    updated = lam.update_function_code(FunctionName="coder", ZipFile=package)
    assert updated["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert (updated["State"], updated["LastUpdateStatus"], updated["LastUpdateStatusReason"],
            updated["LastUpdateStatusReasonCode"]) == ("Active", "InProgress", "The function is being created.", "Creating")
    assert updated["CodeSha256"] == sha256_b64(package) != before["CodeSha256"]
    assert updated["CodeSize"] == len(package)
    assert updated["RevisionId"] != before["RevisionId"]
    assert updated["LastModified"] >= before["LastModified"]

    wait_updated(lam, "coder")
    after = lam.get_function_configuration(FunctionName="coder")
    assert after["LastUpdateStatus"] == "Successful"
    assert not {"LastUpdateStatusReason", "LastUpdateStatusReasonCode"} & after.keys()
    assert after["RevisionId"] not in {before["RevisionId"], updated["RevisionId"]}
    assert after["CodeSha256"] == updated["CodeSha256"]
    assert invoke_json(lam, "coder")[1]["tag"] == "v2"


def test_update_function_code_with_publish_returns_pending_version(lam) -> None:
    create(lam, "code-publish", echo_code("v1"))
    package = make_zip(echo_code("v2"))
    published = lam.update_function_code(FunctionName="code-publish", ZipFile=package, Publish=True)
    assert (published["FunctionArn"], published["Version"]) == (ARN + "code-publish:1", "1")
    assert (published["State"], published["StateReason"], published["StateReasonCode"]) == (
        "Pending", "The function is being created.", "Creating")
    assert published["CodeSha256"] == sha256_b64(package)
    lam.get_waiter("published_version_active").wait(FunctionName="code-publish", Qualifier="1", WaiterConfig=FAST)
    assert lam.get_function_configuration(FunctionName="code-publish", Qualifier="1")["State"] == "Active"
    assert invoke_json(lam, "code-publish", Qualifier="1")[1]["tag"] == "v2"


def test_update_function_configuration(lam) -> None:
    create(lam, "configured", {**echo_code(), "other.py": "def run(event, context):\n    return 'other'\n"})
    before = lam.get_function_configuration(FunctionName="configured")
    updated = lam.update_function_configuration(
        FunctionName="configured", MemorySize=512, Timeout=20, Description="Changed-Description", Runtime="python3.11",
        Environment={"Variables": {"ENV_A": "a"}}, EphemeralStorage={"Size": 2048},
    )
    assert (updated["State"], updated["LastUpdateStatus"]) == ("Active", "InProgress")
    changed = {"MemorySize": 512, "Timeout": 20, "Description": "Changed-Description", "Runtime": "python3.11",
               "Environment": {"Variables": {"ENV_A": "a"}}, "EphemeralStorage": {"Size": 2048}}
    assert {k: updated[k] for k in changed} == changed
    assert updated["CodeSha256"] == before["CodeSha256"]
    assert updated["RevisionId"] != before["RevisionId"]

    wait_updated(lam, "configured")
    after = lam.get_function_configuration(FunctionName="configured")
    assert {k: after[k] for k in changed} == changed
    assert after["LastUpdateStatus"] == "Successful"
    _, body = invoke_json(lam, "configured")
    assert (body["version"], body["env"], body["memory"]) == ("3.11", "a", "512")

    lam.update_function_configuration(FunctionName="configured", Handler="other.run")
    wait_updated(lam, "configured")
    assert invoke_json(lam, "configured")[1] == "other"


def test_update_with_wrong_revision_id_is_rejected(lam) -> None:
    create(lam, "guarded", echo_code())
    before = lam.get_function_configuration(FunctionName="guarded")
    stale = "00000000-0000-0000-0000-000000000000"
    message = ("The Revision Id provided does not match the latest Revision Id. "
               "Call the GetFunction/GetAlias API to retrieve the latest Revision Id")
    with pytest.raises(ClientError) as exc:
        lam.update_function_configuration(FunctionName="guarded", Timeout=9, RevisionId=stale)
    assert_error(exc, 412, "PreconditionFailedException", message)
    with pytest.raises(ClientError) as exc:
        lam.update_function_code(FunctionName="guarded", ZipFile=make_zip(echo_code("v9")), RevisionId=stale)
    assert_error(exc, 412, "PreconditionFailedException", message)
    assert without_metadata(lam.get_function_configuration(FunctionName="guarded")) == without_metadata(before)
    ok = lam.update_function_configuration(FunctionName="guarded", Timeout=9, RevisionId=before["RevisionId"])
    assert ok["Timeout"] == 9


# -- versions --------------------------------------------------------------------------------


def test_publish_version_numbers_idempotency_and_preconditions(lam) -> None:
    create(lam, "pub", echo_code("v1"))
    latest_before = lam.get_function_configuration(FunctionName="pub")
    first = lam.publish_version(FunctionName="pub", Description="first")
    assert first["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert (first["Version"], first["FunctionArn"], first["Description"]) == ("1", ARN + "pub:1", "first")
    assert (first["State"], first["LastUpdateStatus"]) == ("Active", "Successful")
    assert first["CodeSha256"] == latest_before["CodeSha256"]
    latest_after = lam.get_function_configuration(FunctionName="pub")
    assert latest_after["RevisionId"] != latest_before["RevisionId"]  # publishing touches $LATEST's revision

    again = lam.publish_version(FunctionName="pub")  # nothing changed: same version, same revision
    assert again["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert (again["Version"], again["RevisionId"], again["Description"]) == ("1", first["RevisionId"], "first")

    with pytest.raises(ClientError) as exc:
        lam.publish_version(FunctionName="pub", CodeSha256="somenonexistentsha256")
    assert_error(exc, 400, "InvalidParameterValueException",
                 f"CodeSHA256 (somenonexistentsha256) is different from current CodeSHA256 in $LATEST "
                 f"({latest_before['CodeSha256']}). Please try again with the CodeSHA256 in $LATEST.")
    with pytest.raises(ClientError) as exc:
        lam.publish_version(FunctionName="pub", RevisionId=latest_before["RevisionId"])  # stale now
    assert_error(exc, 412, "PreconditionFailedException",
                 "The Revision Id provided does not match the latest Revision Id. "
                 "Call the GetFunction/GetAlias API to retrieve the latest Revision Id")

    package = make_zip(echo_code("v2"))
    lam.update_function_code(FunctionName="pub", ZipFile=package)
    wait_updated(lam, "pub")
    second = lam.publish_version(FunctionName="pub", CodeSha256=sha256_b64(package))
    assert (second["Version"], second["CodeSha256"]) == ("2", sha256_b64(package))
    lam.get_waiter("published_version_active").wait(FunctionName="pub", Qualifier="2", WaiterConfig=FAST)
    assert invoke_json(lam, "pub", Qualifier="1")[1]["tag"] == "v1"
    assert invoke_json(lam, "pub", Qualifier="2")[1]["tag"] == "v2"

    lam.update_function_configuration(FunctionName="pub", Description="only the description changed")
    wait_updated(lam, "pub")
    assert lam.publish_version(FunctionName="pub")["Version"] == "3"


def test_list_versions_by_function(lam) -> None:
    create(lam, "versions", echo_code("v1"))
    lam.publish_version(FunctionName="versions")
    lam.update_function_code(FunctionName="versions", ZipFile=make_zip(echo_code("v2")))
    wait_updated(lam, "versions")
    lam.publish_version(FunctionName="versions")

    listed = lam.list_versions_by_function(FunctionName="versions")
    assert "NextMarker" not in listed
    items = listed["Versions"]
    assert [(v["Version"], v["FunctionArn"]) for v in items] == [
        ("$LATEST", ARN + "versions:$LATEST"), ("1", ARN + "versions:1"), ("2", ARN + "versions:2")]
    assert all(not STATE_KEYS & item.keys() and "RuntimeVersionConfig" not in item for item in items)
    assert items[1]["CodeSha256"] != items[2]["CodeSha256"] == items[0]["CodeSha256"]

    first_page = lam.list_versions_by_function(FunctionName="versions", MaxItems=2)
    rest = lam.list_versions_by_function(FunctionName="versions", Marker=first_page["NextMarker"])
    assert [v["Version"] for v in first_page["Versions"] + rest["Versions"]] == ["$LATEST", "1", "2"]


def test_list_functions_pagination_and_all_versions(lam) -> None:
    names = [f"page-{i}" for i in range(7)]
    for name in names:
        create(lam, name, echo_code(), wait=False)
    for name in names:
        lam.get_waiter("function_active_v2").wait(FunctionName=name, WaiterConfig=FAST)
    lam.publish_version(FunctionName="page-0")

    pages, marker = [], None
    while True:
        kwargs = {"MaxItems": 3, **({"Marker": marker} if marker else {})}
        page = lam.list_functions(**kwargs)
        pages.append([f["FunctionName"] for f in page["Functions"]])
        marker = page.get("NextMarker")
        if marker is None:
            break
    flat = [name for page in pages for name in page]
    assert all(len(page) == 3 for page in pages[:-1]) and 1 <= len(pages[-1]) <= 3
    assert len(flat) == len(set(flat)) and set(names) <= set(flat)

    paginated = [f for page in lam.get_paginator("list_functions").paginate(PaginationConfig={"PageSize": 3})
                 for f in page["Functions"]]
    assert [f["FunctionName"] for f in paginated] == flat
    mine = {f["FunctionName"]: f for f in paginated if f["FunctionName"] in names}
    assert all(f["FunctionArn"] == ARN + name and f["Version"] == "$LATEST" for name, f in mine.items())
    assert all(not STATE_KEYS & f.keys() for f in mine.values())

    every = [f for page in lam.get_paginator("list_functions").paginate(FunctionVersion="ALL")
             for f in page["Functions"]]
    page0 = [(f["Version"], f["FunctionArn"]) for f in every if f["FunctionName"] == "page-0"]
    assert page0 == [("$LATEST", ARN + "page-0:$LATEST"), ("1", ARN + "page-0:1")]
    assert [f for f in every if f["FunctionName"] == "page-1"][0]["FunctionArn"] == ARN + "page-1:$LATEST"

    with pytest.raises(ClientError) as exc:
        lam.list_functions(FunctionVersion="invalid")
    assert_error(exc, 400, "ValidationException",
                 "1 validation error detected: Value 'invalid' at 'functionVersion' failed to satisfy constraint: "
                 "Member must satisfy enum value set: [ALL]")


def test_delete_function_and_versions(lam, server) -> None:
    package = make_zip(echo_code("delete-me"))
    deploy(lam, "doomed", package)
    lam.publish_version(FunctionName="doomed")
    lam.update_function_configuration(FunctionName="doomed", Timeout=5)
    wait_updated(lam, "doomed")
    lam.publish_version(FunctionName="doomed")

    with pytest.raises(ClientError) as exc:
        lam.delete_function(FunctionName="doomed", Qualifier="$LATEST")
    assert_error(exc, 400, "InvalidParameterValueException",
                 "$LATEST version cannot be deleted without deleting the function.")
    deleted = lam.delete_function(FunctionName="doomed", Qualifier="1")
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert [v["Version"] for v in lam.list_versions_by_function(FunctionName="doomed")["Versions"]] == ["$LATEST", "2"]
    assert lam.delete_function(FunctionName="doomed", Qualifier="1")["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as exc:
        lam.get_function(FunctionName="doomed", Qualifier="1")
    assert_error(exc, 404, "ResourceNotFoundException", not_found("doomed", "1"))

    zip_file = server.data_dir / "code" / f"{hashlib.sha256(package).hexdigest()}.zip"
    assert zip_file.is_file()
    assert lam.delete_function(FunctionName="doomed")["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert not zip_file.exists(), "the deleted function's package was not collected"
    for call in (lambda: lam.get_function(FunctionName="doomed"), lambda: lam.delete_function(FunctionName="doomed"),
                 lambda: lam.delete_function(FunctionName="doomed", Qualifier="2")):
        with pytest.raises(ClientError) as exc:
            call()
        assert_error(exc, 404, "ResourceNotFoundException", not_found("doomed"))
    assert "doomed" not in [f["FunctionName"] for f in lam.list_functions()["Functions"]]


# -- aliases ---------------------------------------------------------------------------------


def test_alias_lifecycle(lam) -> None:
    create(lam, "aliased", echo_code("v1"))
    lam.publish_version(FunctionName="aliased")
    lam.update_function_code(FunctionName="aliased", ZipFile=make_zip(echo_code("v2")))
    wait_updated(lam, "aliased")
    lam.publish_version(FunctionName="aliased")
    version_1 = lam.get_function_configuration(FunctionName="aliased", Qualifier="1")

    created = lam.create_alias(FunctionName="aliased", Name="live", FunctionVersion="1", Description="custom-alias",
                               RoutingConfig={"AdditionalVersionWeights": {"2": 0.2}})
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert without_metadata(created) == {
        "AliasArn": ARN + "aliased:live", "Name": "live", "FunctionVersion": "1", "Description": "custom-alias",
        "RevisionId": created["RevisionId"], "RoutingConfig": {"AdditionalVersionWeights": {"2": 0.2}}}
    assert is_uuid(created["RevisionId"])
    assert lam.get_function_configuration(FunctionName="aliased", Qualifier="1")["RevisionId"] == version_1["RevisionId"]
    assert without_metadata(lam.get_alias(FunctionName="aliased", Name="live")) == without_metadata(created)

    plain = lam.create_alias(FunctionName="aliased", Name="latest", FunctionVersion="$LATEST",
                             RoutingConfig={"AdditionalVersionWeights": {}})
    assert "RoutingConfig" not in plain and plain["Description"] == ""
    dated = lam.create_alias(FunctionName="aliased", Name="2024-01-02", FunctionVersion="2")
    assert dated["AliasArn"] == ARN + "aliased:2024-01-02"

    listed = lam.list_aliases(FunctionName="aliased")["Aliases"]
    assert sorted(a["Name"] for a in listed) == ["2024-01-02", "latest", "live"]
    assert [a["Name"] for a in lam.list_aliases(FunctionName="aliased", FunctionVersion="2")["Aliases"]] == ["2024-01-02"]

    updated = lam.update_alias(FunctionName="aliased", Name="live", FunctionVersion="2",
                               RoutingConfig={"AdditionalVersionWeights": {}}, RevisionId=created["RevisionId"])
    assert updated["FunctionVersion"] == "2" and "RoutingConfig" not in updated
    assert updated["RevisionId"] != created["RevisionId"]
    assert updated["Description"] == "custom-alias"
    with pytest.raises(ClientError) as exc:
        lam.update_alias(FunctionName="aliased", Name="live", FunctionVersion="1", RevisionId=created["RevisionId"])
    assert_error(exc, 412, "PreconditionFailedException",
                 "The Revision Id provided does not match the latest Revision Id. "
                 "Call the GetFunction/GetAlias API to retrieve the latest Revision Id")
    response, body = invoke_json(lam, "aliased", Qualifier="live")
    assert (response["ExecutedVersion"], body["tag"]) == ("2", "v2")

    assert lam.delete_alias(FunctionName="aliased", Name="live")["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert lam.delete_alias(FunctionName="aliased", Name="live")["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as exc:
        lam.get_alias(FunctionName="aliased", Name="live")
    assert_error(exc, 404, "ResourceNotFoundException", f"Cannot find alias arn: {ARN}aliased:live")
    assert sorted(a["Name"] for a in lam.list_aliases(FunctionName="aliased")["Aliases"]) == ["2024-01-02", "latest"]


def test_alias_errors(lam) -> None:
    create(lam, "alias-errors", echo_code())
    lam.publish_version(FunctionName="alias-errors")
    lam.create_alias(FunctionName="alias-errors", Name="custom", FunctionVersion="1")
    cases = [
        (dict(Name="custom", FunctionVersion="1"), 409, "ResourceConflictException",
         f"Alias already exists: {ARN}alias-errors:custom"),
        (dict(Name="other", FunctionVersion="10"), 404, "ResourceNotFoundException", not_found("alias-errors", "10")),
        (dict(Name="2024", FunctionVersion="1"), 400, "ValidationException",
         "1 validation error detected: Value '2024' at 'name' failed to satisfy constraint: "
         "Member must satisfy regular expression pattern: (?!^[0-9]+$)([a-zA-Z0-9-_]+)"),
        (dict(Name="other", FunctionVersion="1", RoutingConfig={"AdditionalVersionWeights": {"10": 0.5}}), 404,
         "ResourceNotFoundException", not_found("alias-errors", "10")),
        (dict(Name="other", FunctionVersion="1", RoutingConfig={"AdditionalVersionWeights": {"1": 0.5}}), 400,
         "InvalidParameterValueException",
         "Invalid function version 1. Function version 1 is already included in routing configuration."),
        (dict(Name="other", FunctionVersion="$LATEST", RoutingConfig={"AdditionalVersionWeights": {"1": 0.5}}), 400,
         "InvalidParameterValueException", "$LATEST is not supported for an alias pointing to more than 1 version"),
        (dict(Name="other", FunctionVersion="1", RoutingConfig={"AdditionalVersionWeights": {"1": 0.5, "2": 0.1}}),
         400, "InvalidParameterValueException", "Number of items in AdditionalVersionWeights cannot be greater than 1"),
    ]
    for kwargs, status, code, message in cases:
        with pytest.raises(ClientError) as exc:
            lam.create_alias(FunctionName="alias-errors", **kwargs)
        assert_error(exc, status, code, message)
    with pytest.raises(ClientError) as exc:
        lam.create_alias(FunctionName="alias-errors-unknown", Name="x", FunctionVersion="1")
    assert_error(exc, 404, "ResourceNotFoundException", not_found("alias-errors-unknown", "1"))  # names the version
    with pytest.raises(ClientError) as exc:
        lam.update_alias(FunctionName="alias-errors", Name="non-existent", FunctionVersion="1")
    assert_error(exc, 404, "ResourceNotFoundException", f"Alias not found: {ARN}alias-errors:non-existent")
    with pytest.raises(ClientError) as exc:
        lam.get_function(FunctionName="alias-errors", Qualifier="aliasdoesnotexist")
    assert_error(exc, 404, "ResourceNotFoundException", not_found("alias-errors", "aliasdoesnotexist"))
    assert [a["Name"] for a in lam.list_aliases(FunctionName="alias-errors")["Aliases"]] == ["custom"]


# -- reserved concurrency ----------------------------------------------------------------------


def test_function_concurrency(lam) -> None:
    create(lam, "reserved", echo_code())
    nothing = lam.get_function_concurrency(FunctionName="reserved")
    assert without_metadata(nothing) == {} and nothing["ResponseMetadata"]["HTTPStatusCode"] == 200

    put = lam.put_function_concurrency(FunctionName="reserved", ReservedConcurrentExecutions=2)
    assert without_metadata(put) == {"ReservedConcurrentExecutions": 2}
    assert without_metadata(lam.get_function_concurrency(FunctionName="reserved")) == {"ReservedConcurrentExecutions": 2}
    assert lam.get_function(FunctionName="reserved")["Concurrency"] == {"ReservedConcurrentExecutions": 2}
    assert invoke_json(lam, "reserved")[0]["StatusCode"] == 200

    with pytest.raises(ClientError) as exc:
        lam.put_function_concurrency(FunctionName="reserved:1", ReservedConcurrentExecutions=1)
    assert_error(exc, 400, "InvalidParameterValueException",
                 "This operation is permitted on Lambda functions only. Aliases and versions do not support this "
                 "operation. Please specify either a function name or an unqualified function ARN.")
    with pytest.raises(ClientError) as exc:
        lam.put_function_concurrency(FunctionName="doesnotexist", ReservedConcurrentExecutions=1)
    assert_error(exc, 404, "ResourceNotFoundException", not_found("doesnotexist", "$LATEST"))
    assert without_metadata(lam.get_function_concurrency(FunctionName="reserved")) == {"ReservedConcurrentExecutions": 2}

    deleted = lam.delete_function_concurrency(FunctionName="reserved")
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert without_metadata(lam.get_function_concurrency(FunctionName="reserved")) == {}
    assert "Concurrency" not in lam.get_function(FunctionName="reserved")


def test_zero_reserved_concurrency_throttles(lam) -> None:
    create(lam, "throttled", echo_code())
    assert without_metadata(lam.put_function_concurrency(FunctionName="throttled", ReservedConcurrentExecutions=0)) == {
        "ReservedConcurrentExecutions": 0}
    with pytest.raises(ClientError) as exc:
        lam.invoke(FunctionName="throttled", Payload=json.dumps({}).encode())
    assert_error(exc, 429, "TooManyRequestsException", "Rate Exceeded.")
    assert exc.value.response["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"


# -- waiters ---------------------------------------------------------------------------------


def test_waiters_observe_real_transitions(lam) -> None:
    created = create(lam, "waited", echo_code("v1"), wait=False)
    assert created["State"] == "Pending"
    lam.get_waiter("function_active_v2").wait(FunctionName="waited", WaiterConfig=FAST)
    assert lam.get_function(FunctionName="waited")["Configuration"]["State"] == "Active"

    assert lam.update_function_code(FunctionName="waited", ZipFile=make_zip(echo_code("v2")))["LastUpdateStatus"] == "InProgress"
    lam.get_waiter("function_updated_v2").wait(FunctionName="waited", WaiterConfig=FAST)
    assert lam.get_function(FunctionName="waited")["Configuration"]["LastUpdateStatus"] == "Successful"

    version = lam.update_function_code(FunctionName="waited", ZipFile=make_zip(echo_code("v3")), Publish=True)["Version"]
    lam.get_waiter("published_version_active").wait(FunctionName="waited", Qualifier=version, WaiterConfig=FAST)
    assert lam.get_function(FunctionName="waited", Qualifier=version)["Configuration"]["State"] == "Active"
