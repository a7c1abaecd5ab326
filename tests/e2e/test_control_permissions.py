"""AddPermission / GetPolicy / RemovePermission through boto3: wire shapes, qualifiers, errors."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

from tests.conftest import create
from tests.e2e.test_control_plane import echo_code

PREFIX = "arn:aws:lambda:us-east-1:000000000000:function:"
ROLE = "arn:aws:iam::000000000000:role/caller"


def error_of(call, **kwargs) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(ClientError) as info:
        call(**kwargs)
    response = info.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"], response["Error"]["Message"]


@pytest.fixture(scope="module")
def fn(lam) -> str:  # type: ignore[no-untyped-def]
    create(lam, "perm", echo_code())
    lam.publish_version(FunctionName="perm")
    lam.create_alias(FunctionName="perm", Name="live", FunctionVersion="1")
    return "perm"


def test_add_get_remove(lam, fn: str) -> None:  # type: ignore[no-untyped-def]
    added = lam.add_permission(FunctionName=fn, StatementId="s3", Action="lambda:InvokeFunction",
                               Principal="s3.amazonaws.com", SourceArn="arn:aws:s3:::bucket")
    assert added["ResponseMetadata"]["HTTPStatusCode"] == 201
    statement = json.loads(added["Statement"])
    assert statement == {"Sid": "s3", "Effect": "Allow", "Principal": {"Service": "s3.amazonaws.com"},
                         "Action": "lambda:InvokeFunction", "Resource": PREFIX + fn,
                         "Condition": {"ArnLike": {"AWS:SourceArn": "arn:aws:s3:::bucket"}}}
    lam.add_permission(FunctionName=fn, StatementId="role", Action="lambda:InvokeFunction", Principal=ROLE)
    got = lam.get_policy(FunctionName=fn)
    assert json.loads(got["Policy"]) == {"Version": "2012-10-17", "Id": "default", "Statement": [
        statement, {"Sid": "role", "Effect": "Allow", "Principal": {"AWS": ROLE}, "Action": "lambda:InvokeFunction",
                    "Resource": PREFIX + fn}]}
    assert error_of(lam.remove_permission, FunctionName=fn, StatementId="s3", RevisionId="stale")[:2] == (
        412, "PreconditionFailedException")
    removed = lam.remove_permission(FunctionName=fn, StatementId="s3", RevisionId=got["RevisionId"])
    assert removed["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert [s["Sid"] for s in json.loads(lam.get_policy(FunctionName=fn)["Policy"])["Statement"]] == ["role"]
    lam.remove_permission(FunctionName=fn, StatementId="role")
    assert error_of(lam.get_policy, FunctionName=fn) == (404, "ResourceNotFoundException", "The resource you requested does not exist.")


def test_qualified_policies(lam, fn: str) -> None:  # type: ignore[no-untyped-def]
    lam.add_permission(FunctionName=fn, Qualifier="live", StatementId="a", Action="lambda:InvokeFunction", Principal="*")
    lam.add_permission(FunctionName=f"{fn}:1", StatementId="v", Action="lambda:InvokeFunction", Principal="000000000000")
    alias_policy = json.loads(lam.get_policy(FunctionName=fn, Qualifier="live")["Policy"])
    assert alias_policy["Statement"][0]["Resource"] == PREFIX + fn + ":live"
    version_policy = json.loads(lam.get_policy(FunctionName=PREFIX + fn + ":1")["Policy"])
    assert version_policy["Statement"][0]["Principal"] == {"AWS": "arn:aws:iam::000000000000:root"}
    assert error_of(lam.get_policy, FunctionName=fn)[:2] == (404, "ResourceNotFoundException")
    lam.delete_alias(FunctionName=fn, Name="live")
    lam.create_alias(FunctionName=fn, Name="live", FunctionVersion="1")
    assert error_of(lam.get_policy, FunctionName=fn, Qualifier="live")[:2] == (404, "ResourceNotFoundException")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"FunctionName": "perm", "Qualifier": "$LATEST"},
         (400, "InvalidParameterValueException", "We currently do not support adding policies for $LATEST.")),
        ({"FunctionName": "perm:1", "Qualifier": "2"},
         (400, "InvalidParameterValueException", "The derived qualifier from the function name does not match the specified qualifier.")),
        ({"FunctionName": "doesnotexist"}, (404, "ResourceNotFoundException", f"Function not found: {PREFIX}doesnotexist")),
        ({"FunctionName": "perm", "Qualifier": "42"}, (404, "ResourceNotFoundException", f"Function not found: {PREFIX}perm:42")),
        ({"FunctionName": "perm", "Qualifier": "nope"}, (404, "ResourceNotFoundException", f"Cannot find alias arn: {PREFIX}perm:nope")),
        ({"FunctionName": "perm", "Principal": "not-valid"},
         (400, "InvalidParameterValueException", "The provided principal was invalid. Please check the principal and try again.")),
        ({"FunctionName": "perm", "StatementId": "example.com"},
         (400, "ValidationException", "1 validation error detected: Value 'example.com' at 'statementId' failed to satisfy "
                                      "constraint: Member must satisfy regular expression pattern: ([a-zA-Z0-9-_]+)")),
    ],
)
def test_add_permission_errors(lam, fn: str, kwargs: dict, expected: tuple) -> None:  # type: ignore[no-untyped-def]
    call = {"StatementId": "x", "Action": "lambda:InvokeFunction", "Principal": "*", **kwargs}
    assert error_of(lam.add_permission, **call) == expected
    assert error_of(lam.get_policy, FunctionName=fn)[:2] == (404, "ResourceNotFoundException")  # nothing written


def test_conflict_and_remove_errors(lam, fn: str) -> None:  # type: ignore[no-untyped-def]
    lam.add_permission(FunctionName=fn, StatementId="dup", Action="lambda:InvokeFunction", Principal="*")
    assert error_of(lam.add_permission, FunctionName=fn, StatementId="dup", Action="lambda:InvokeFunction", Principal="*") == (
        409, "ResourceConflictException",
        "The statement id (dup) provided already exists. Please provide a new statement id, or remove the existing statement.")
    assert error_of(lam.remove_permission, FunctionName=fn, StatementId="other") == (
        404, "ResourceNotFoundException", "Statement other is not found in resource policy.")
    assert error_of(lam.remove_permission, FunctionName="doesnotexist", StatementId="dup") == (
        404, "ResourceNotFoundException", f"No policy found for: {PREFIX}doesnotexist")
    assert error_of(lam.remove_permission, FunctionName=fn, StatementId="dup", Qualifier="live") == (
        404, "ResourceNotFoundException", "No policy is associated with the given resource.")
    lam.remove_permission(FunctionName=fn, StatementId="dup")


def test_policies_go_with_the_function(lam) -> None:  # type: ignore[no-untyped-def]
    create(lam, "perm-deleted", echo_code())
    lam.add_permission(FunctionName="perm-deleted", StatementId="s", Action="lambda:InvokeFunction", Principal="*")
    lam.delete_function(FunctionName="perm-deleted")
    create(lam, "perm-deleted", echo_code())
    assert error_of(lam.get_policy, FunctionName="perm-deleted")[:2] == (404, "ResourceNotFoundException")
