"""The authorization decision (snapfaas.policy.authorize) and the principal's ARNs."""

from __future__ import annotations

from typing import Any

import pytest

from snapfaas import policy
from snapfaas.principals import FunctionPrincipal, Operator

ACCOUNT = "000000000000"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/service/caller-role"
CALLER = FunctionPrincipal("caller", ROLE, ACCOUNT)
TARGET = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:target"
SESSION = f"arn:aws:sts::{ACCOUNT}:assumed-role/caller-role/caller"


def grant(principal: object, action: object = "lambda:InvokeFunction", resource: object = TARGET, **extra: Any) -> dict:
    return {"Sid": "s", "Effect": "Allow", "Principal": principal, "Action": action, "Resource": resource, **extra}


def test_principal_arns() -> None:
    assert CALLER.arn == SESSION
    assert CALLER.role_name == "caller-role"
    other_account = FunctionPrincipal("f", "arn:aws:iam::123456789012:role/r", ACCOUNT)
    assert other_account.arn == "arn:aws:sts::123456789012:assumed-role/r/f"


@pytest.mark.parametrize("action", ["lambda:ListFunctions", "lambda:DeleteFunction", policy.INVOKE, "snapfaas:Echo"])
def test_operator_may_do_everything(action: str) -> None:
    assert policy.authorize(Operator("SFIA1"), action, TARGET) == policy.Decision(True)


@pytest.mark.parametrize(
    ("action", "resource"),
    [
        ("lambda:ListFunctions", f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:*"),
        ("lambda:GetFunction", TARGET),
        ("lambda:UpdateFunctionCode", TARGET),
        ("lambda:AddPermission", TARGET),
        ("snapfaas:GetFunctionLogs", TARGET),
    ],
)
def test_function_is_denied_everything_but_invoke_even_with_a_grant(action: str, resource: str) -> None:
    """Resource-based grants only ever allow InvokeFunction: a `lambda:*` statement included."""
    decision = policy.authorize(CALLER, action, resource, [grant("*", "lambda:*", "*")])
    assert not decision.allowed
    assert decision.reason == (f"User: {SESSION} is not authorized to perform: {action} on resource: {resource} "
                               f"because no identity-based policy allows the {action} action")


def test_invoke_without_policy_is_denied_with_lambdas_wording() -> None:
    decision = policy.authorize(CALLER, policy.INVOKE, TARGET, [])
    assert decision == policy.Decision(
        False,
        f"User: {SESSION} is not authorized to perform: lambda:InvokeFunction on resource: {TARGET} "
        "because no resource-based policy allows the lambda:InvokeFunction action",
    )


@pytest.mark.parametrize(
    "statement",
    [
        grant({"AWS": ROLE}),
        grant({"AWS": SESSION}),
        grant({"AWS": f"arn:aws:iam::{ACCOUNT}:root"}),
        grant({"AWS": ACCOUNT}),
        grant({"AWS": [f"arn:aws:iam::{ACCOUNT}:role/other", ROLE]}),
        grant({"AWS": "*"}),
        grant("*"),
        grant({"AWS": ROLE}, action="lambda:*"),
        grant({"AWS": ROLE}, action="*"),
        grant({"AWS": ROLE}, action=["lambda:GetFunction", "LAMBDA:invokefunction"]),
        grant({"AWS": ROLE}, resource=f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:tar*"),
        grant({"AWS": ROLE}, resource=[f"{TARGET}:1", TARGET]),
        grant({"AWS": ROLE}, resource=f"{TARGET}:$LATEST"),  # $LATEST is the unqualified function
    ],
)
def test_invoke_granted(statement: dict) -> None:
    assert policy.authorize(CALLER, policy.INVOKE, TARGET, [statement]).allowed
    assert policy.authorize(CALLER, policy.INVOKE, f"{TARGET}:$LATEST", [statement]).allowed


@pytest.mark.parametrize(
    "statement",
    [
        grant({"AWS": f"arn:aws:iam::{ACCOUNT}:role/other-role"}),
        grant({"AWS": "arn:aws:iam::123456789012:root"}),
        grant({"AWS": "123456789012"}),
        grant({"Service": "s3.amazonaws.com"}),
        grant("arn:aws:iam::000000000000:role/service/caller-role"),  # not a valid Principal element
        grant({"AWS": ROLE}, action="lambda:GetFunction"),
        grant({"AWS": ROLE}, action="lambda:InvokeFunctionUrl"),
        grant({"AWS": ROLE}, resource=f"{TARGET}:1"),
        grant({"AWS": ROLE}, resource=f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:other"),
        grant({"AWS": ROLE}, Effect="Deny"),
        grant("*", Condition={"StringEquals": {"AWS:SourceAccount": ACCOUNT}}),
        grant({"AWS": ROLE}, Condition={"ArnLike": {"AWS:SourceArn": "arn:aws:s3:::b"}}),
    ],
)
def test_invoke_not_granted(statement: dict) -> None:
    assert not policy.authorize(CALLER, policy.INVOKE, TARGET, [statement]).allowed


def test_version_policy_is_separate_from_unqualified() -> None:
    """A grant on the unqualified function does not cover version 1 (Lambda: the policy of the ARN
    used to invoke applies)."""
    assert not policy.authorize(CALLER, policy.INVOKE, f"{TARGET}:1", [grant({"AWS": ROLE})]).allowed
    assert policy.authorize(CALLER, policy.INVOKE, f"{TARGET}:1", [grant({"AWS": ROLE}, resource=f"{TARGET}:1")]).allowed


@pytest.mark.parametrize(
    ("given", "element"),
    [
        ("*", "*"),
        ("s3.amazonaws.com", {"Service": "s3.amazonaws.com"}),
        (ACCOUNT, {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}),
        (ROLE, {"AWS": ROLE}),
        ("arn:aws:iam::000000000000:user/u", {"AWS": "arn:aws:iam::000000000000:user/u"}),
        ("caller-role", None),
        ("12345", None),
        ("arn:aws:sts::000000000000:assumed-role/r/f", None),
    ],
)
def test_principal_element(given: str, element: object) -> None:
    assert policy.principal_element(given) == element


def test_document_shape() -> None:
    assert policy.document([grant("*")]) == {"Version": "2012-10-17", "Id": "default", "Statement": [grant("*")]}
