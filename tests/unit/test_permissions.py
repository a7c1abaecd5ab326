"""Resource-based policies (snapfaas.registry.permissions) on a real SQLite registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy

from snapfaas.errors import (
    Conflict, InvalidParameterValue, NotFound, PolicyLengthExceeded, PreconditionFailed, SnapfaasError, ValidationError,
)
from snapfaas.registry.db import Registry
from snapfaas.registry.model import LATEST, Alias
from snapfaas.registry import schema
from snapfaas.registry.permissions import Permissions
from tests.unit.test_registry import PREFIX, created

ROLE = "arn:aws:iam::000000000000:role/caller"


@pytest.fixture
def perms(reg: Registry) -> Permissions:
    created(reg, "f")
    reg.publish("f", None, None, None)
    reg.create_alias(Alias("f", "live", "1", "", "rev-alias", {}))
    return Permissions(reg)


def body(sid: str = "s1", principal: str = ROLE, **extra: object) -> dict:
    return {"StatementId": sid, "Action": "lambda:InvokeFunction", "Principal": principal, **extra}


def raises(kind: type[SnapfaasError], message: str, call, *args) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(kind) as info:
        call(*args)
    assert type(info.value) is kind
    assert info.value.message == message


def test_add_get_remove_unqualified(perms: Permissions) -> None:
    statement = perms.add("f", None, body())
    assert statement == {"Sid": "s1", "Effect": "Allow", "Principal": {"AWS": ROLE}, "Action": "lambda:InvokeFunction",
                         "Resource": PREFIX + "f"}
    second = perms.add("f", None, body("s2", "000000000000", SourceArn="arn:aws:s3:::bucket", SourceAccount="000000000000"))
    assert second["Principal"] == {"AWS": "arn:aws:iam::000000000000:root"}
    assert second["Condition"] == {"StringEquals": {"AWS:SourceAccount": "000000000000"},
                                   "ArnLike": {"AWS:SourceArn": "arn:aws:s3:::bucket"}}
    document, revision = perms.get("f", None)
    assert document == {"Version": "2012-10-17", "Id": "default", "Statement": [statement, second]}
    assert perms.get("f", LATEST) == (document, revision)  # $LATEST shares the unqualified policy
    assert perms.statements("f", None) == [statement, second]
    perms.remove("f", None, "s1", revision)
    document, newer = perms.get("f", None)
    assert document["Statement"] == [second] and newer != revision
    perms.remove("f", None, "s2", None)
    raises(NotFound, "The resource you requested does not exist.", perms.get, "f", None)  # last statement: policy gone
    assert perms.statements("f", None) == []


def test_policies_are_per_qualifier(perms: Permissions) -> None:
    perms.add("f", "1", body())
    perms.add("f", "live", body())  # same Sid in another policy is fine
    assert perms.get("f", "1")[0]["Statement"][0]["Resource"] == PREFIX + "f:1"
    assert perms.get("f", "live")[0]["Statement"][0]["Resource"] == PREFIX + "f:live"
    raises(NotFound, "The resource you requested does not exist.", perms.get, "f", None)
    assert perms.statements("f", None) == []


@pytest.mark.parametrize(
    ("name", "qualifier", "payload", "kind", "message"),
    [
        ("f", LATEST, body(), InvalidParameterValue, "We currently do not support adding policies for $LATEST."),
        ("nope", None, body(), NotFound, f"Function not found: {PREFIX}nope"),
        ("f", "42", body(), NotFound, f"Function not found: {PREFIX}f:42"),
        ("f", "gone", body(), NotFound, f"Cannot find alias arn: {PREFIX}f:gone"),
        ("f", "valid-with-$-but-missing", body(), NotFound, f"Function not found: {PREFIX}f:valid-with-$-but-missing"),
        ("f", None, body("example.com"), ValidationError,
         "1 validation error detected: Value 'example.com' at 'statementId' failed to satisfy constraint: "
         "Member must satisfy regular expression pattern: ([a-zA-Z0-9-_]+)"),
        ("f", None, {"Action": "lambda:InvokeFunction", "Principal": "*"}, ValidationError,
         "1 validation error detected: Value 'null' at 'statementId' failed to satisfy constraint: Member must not be null"),
        ("f", None, body(Action="invoke"), ValidationError,
         "1 validation error detected: Value 'invoke' at 'action' failed to satisfy constraint: "
         "Member must satisfy regular expression pattern: (lambda:[*]|lambda:[a-zA-Z]+|[*])"),
        ("f", None, body(principal="not a principal"), ValidationError,
         "1 validation error detected: Value 'not a principal' at 'principal' failed to satisfy constraint: "
         "Member must satisfy regular expression pattern: [^\\s]+"),
        ("f", None, body(principal="caller-role"), InvalidParameterValue,
         "The provided principal was invalid. Please check the principal and try again."),
        ("f", None, body(SourceAccount="123"), ValidationError,
         "1 validation error detected: Value '123' at 'sourceAccount' failed to satisfy constraint: "
         "Member must satisfy regular expression pattern: \\d{12}"),
        ("f", None, body(RevisionId="stale"), PreconditionFailed,
         "The Revision Id provided does not match the latest Revision Id. Call the GetPolicy API to retrieve the latest Revision Id"),
    ],
)
def test_add_errors_change_nothing(perms: Permissions, name: str, qualifier: str | None, payload: dict,
                                   kind: type[SnapfaasError], message: str) -> None:
    raises(kind, message, perms.add, name, qualifier, payload)
    for q in (None, "1", "live"):
        assert perms.statements("f", q) == []


def test_add_conflicting_sid_and_revision_ids(perms: Permissions, reg: Registry) -> None:
    latest_revision = reg.get_version("f", LATEST).revision_id
    perms.add("f", None, body(RevisionId=latest_revision))  # no policy yet: the function's RevisionId
    raises(Conflict, "The statement id (s1) provided already exists. Please provide a new statement id, or remove the "
                     "existing statement.", perms.add, "f", None, body())
    _, revision = perms.get("f", None)
    raises(PreconditionFailed, "The Revision Id provided does not match the latest Revision Id. Call the GetPolicy API "
                               "to retrieve the latest Revision Id", perms.add, "f", None, body("s2", RevisionId=latest_revision))
    perms.add("f", None, body("s2", RevisionId=revision))
    assert reg.get_version("f", LATEST).revision_id == latest_revision  # granting never recycles environments
    alias_revision = reg.get_alias("f", "live").revision_id
    perms.add("f", "live", body(RevisionId=alias_revision))


def test_remove_errors(perms: Permissions) -> None:
    raises(NotFound, f"No policy found for: {PREFIX}nope", perms.remove, "nope", None, "s1", None)
    raises(NotFound, f"Cannot find alias arn: {PREFIX}f:gone", perms.remove, "f", "gone", "s1", None)
    raises(NotFound, "No policy is associated with the given resource.", perms.remove, "f", None, "s1", None)
    perms.add("f", None, body())
    raises(NotFound, "Statement non-existent is not found in resource policy.", perms.remove, "f", None, "non-existent", None)
    raises(PreconditionFailed, "The Revision Id provided does not match the latest Revision Id. Call the GetFunction/GetAlias "
                               "API to retrieve the latest Revision Id", perms.remove, "f", None, "s1", "stale")
    assert [s["Sid"] for s in perms.statements("f", None)] == ["s1"]


def test_policy_size_is_capped(perms: Permissions) -> None:
    added = 0
    with pytest.raises(PolicyLengthExceeded) as info:
        for i in range(200):
            perms.add("f", None, body(f"s{i}", SourceArn=f"arn:aws:s3:::{'b' * 200}{i}"))
            added += 1
    assert info.value.message.endswith("is bigger than the limit (20480).")
    assert 0 < added < 200
    assert len(perms.statements("f", None)) == added  # the refused statement was not stored
    assert len(json.dumps(perms.get("f", None)[0])) <= 20480


def test_policies_go_with_what_they_are_attached_to(perms: Permissions, reg: Registry) -> None:
    perms.add("f", None, body())
    perms.add("f", "1", body())
    perms.add("f", "live", body())
    reg.delete_alias("f", "live")
    assert perms.statements("f", "live") == []
    reg.create_alias(Alias("f", "live", "1", "", "rev-2", {}))
    assert perms.statements("f", "live") == []  # a new alias of that name starts without a policy
    reg.delete_alias("f", "live")
    reg.delete_version("f", "1")
    assert perms.statements("f", "1") == []
    reg.delete_function("f")
    assert reg.rows(sqlalchemy.select(sqlalchemy.func.count()).select_from(schema.policies))[0][0] == 0  # cascade
    created(reg, "f")
    assert perms.statements("f", None) == []


def test_existing_state_db_gains_the_policies_table(registry_target: Path | str) -> None:
    """A registry written before policies (and versioned migrations) existed opens, keeps its
    functions, and takes policies."""
    path = registry_target
    first = Registry(path, PREFIX)
    created(first, "old")
    with first.engine.begin() as conn:
        conn.execute(sqlalchemy.text("DROP TABLE policies"))
        conn.execute(sqlalchemy.text("DROP TABLE schema_version"))
    first.close()
    reopened = Registry(path, PREFIX)
    try:
        assert reopened.get_version("old", LATEST).name == "old"
        Permissions(reopened).add("old", None, body())
        assert Permissions(reopened).statements("old", None)[0]["Sid"] == "s1"
    finally:
        reopened.close()


def test_statement_members_are_as_lambda_writes_them(perms: Permissions) -> None:
    statement = perms.add("f", None, body("url", "*", Action="lambda:InvokeFunctionUrl", FunctionUrlAuthType="NONE",
                                          PrincipalOrgID="o-1234567890", SourceAccount="000000000000",
                                          SourceArn="arn:aws:s3:::b"))
    assert list(statement) == ["Sid", "Effect", "Principal", "Action", "Resource", "Condition"]
    assert statement["Principal"] == "*"
    assert statement["Condition"] == {
        "StringEquals": {"lambda:FunctionUrlAuthType": "NONE", "aws:PrincipalOrgID": "o-1234567890",
                         "AWS:SourceAccount": "000000000000"},
        "ArnLike": {"AWS:SourceArn": "arn:aws:s3:::b"},
    }
