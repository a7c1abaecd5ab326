"""Authorization: who may do what, decided by one pure function.

Contract of `authorize(principal, action, resource, statements)`:

- The operator (`Operator`) is allowed everything.
- A function's environment (`FunctionPrincipal`) has no identity-based permissions: every
  action is denied, except ``lambda:InvokeFunction`` when a statement of the target's
  resource-based policy (made with AddPermission) allows it. A statement allows it when

  * ``Effect`` is ``Allow``,
  * ``Action`` is ``lambda:InvokeFunction``, ``lambda:*`` or ``*`` (case-insensitive),
  * ``Resource`` matches the invoked ARN (``*``/``?`` wildcards; ``:$LATEST`` is the
    unqualified function),
  * ``Principal`` is ``*``, ``{"AWS": "*"}``, the caller's execution role ARN, its
    assumed-role session ARN, or its account (``"<account>"`` / ``arn:aws:iam::<account>:root``),
  * and it has no ``Condition``: the conditions AddPermission can write (source ARN/account,
    organization, event source token, function URL) describe calls by AWS services, event
    sources or URLs, never a direct call by a role, so such a statement never matches one.

The statements to pass are those of the policy attached to the qualifier the caller invoked
(unqualified/``$LATEST``, a version, or an alias), as on Lambda.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Iterable, Mapping
from typing import Any

from snapfaas.principals import FunctionPrincipal, Operator, Principal

INVOKE = "lambda:InvokeFunction"
POLICY_VERSION = "2012-10-17"
POLICY_ID = "default"
ACCOUNT_RE = re.compile(r"^\d{12}$")
IAM_ARN_RE = re.compile(r"^arn:aws[a-zA-Z-]*:iam:")


@dataclasses.dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str | None = None  # Lambda's AccessDeniedException message when denied

    @classmethod
    def allow(cls) -> "Decision":
        return cls(True)


def authorize(principal: Principal, action: str, resource: str, statements: Iterable[Mapping[str, Any]] = ()) -> Decision:
    """Allow or deny `principal` doing `action` on `resource` (see the module docstring)."""
    if isinstance(principal, Operator):
        return Decision.allow()
    if action == INVOKE and any(_grants(s, principal, resource) for s in statements):
        return Decision.allow()
    kind = "resource-based" if action == INVOKE else "identity-based"
    return Decision(
        False,
        f"User: {principal.arn} is not authorized to perform: {action} on resource: {resource} "
        f"because no {kind} policy allows the {action} action",
    )


def _grants(statement: Mapping[str, Any], principal: FunctionPrincipal, resource: str) -> bool:
    if statement.get("Effect") != "Allow" or statement.get("Condition"):
        return False
    return (
        _matches_action(statement.get("Action"))
        and _matches_resource(statement.get("Resource"), resource)
        and _matches_principal(statement.get("Principal"), principal)
    )


def _as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else [value]


def _matches_action(value: object) -> bool:
    return any(isinstance(a, str) and a.lower() in ("*", "lambda:*", INVOKE.lower()) for a in _as_list(value))


def _unqualified_latest(arn: str) -> str:
    return arn.removesuffix(":$LATEST")


def _matches_resource(value: object, resource: str) -> bool:
    target = _unqualified_latest(resource)
    return any(isinstance(r, str) and fnmatch.fnmatchcase(target, _unqualified_latest(r)) for r in _as_list(value))


def _matches_principal(value: object, principal: FunctionPrincipal) -> bool:
    if value == "*":
        return True
    if not isinstance(value, Mapping):
        return False
    account = principal.role_account
    accepted = {"*", principal.role, principal.arn, account, f"arn:{principal.partition}:iam::{account}:root"}
    return any(isinstance(p, str) and p in accepted for p in _as_list(value.get("AWS")))


def principal_element(principal: str) -> str | dict[str, str] | None:
    """AddPermission's ``Principal`` as the policy states it, or None if Lambda rejects it."""
    if principal == "*":
        return "*"
    if principal.endswith(".amazonaws.com"):
        return {"Service": principal}
    if ACCOUNT_RE.match(principal):
        return {"AWS": f"arn:aws:iam::{principal}:root"}
    if IAM_ARN_RE.match(principal):
        return {"AWS": principal}
    return None


def document(statements: list[dict[str, Any]]) -> dict[str, Any]:
    """The policy document GetPolicy returns (JSON-encoded) for `statements`."""
    return {"Version": POLICY_VERSION, "Id": POLICY_ID, "Statement": statements}
