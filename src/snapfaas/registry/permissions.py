"""AddPermission / RemovePermission / GetPolicy: functions' resource-based policies.

A policy belongs to the unqualified function (which ``$LATEST`` shares) or to one version or
alias, as on Lambda; a statement is stored exactly as GetPolicy shows it. Validation order and
error wording follow Lambda's. One difference: a policy has a RevisionId of its own (minted by
every change and returned by GetPolicy) instead of bumping the function's or alias's, so
granting a permission never recycles the function's execution environments. A ``RevisionId``
passed to AddPermission/RemovePermission must match the policy's (AddPermission on a target
without a policy yet: the function's/alias's, which is what a client has read then).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from snapfaas import policy
from snapfaas.errors import Conflict, InvalidParameterValue, NotFound, PolicyLengthExceeded, PreconditionFailed
from snapfaas.registry import validation as check
from snapfaas.registry.db import Registry
from snapfaas.registry.model import LATEST

MAX_POLICY_BYTES = 20 * 1024
STATEMENT_ID_RE = re.compile(r"^[a-zA-Z0-9-_]+$")
REMOVE_STATEMENT_ID_RE = re.compile(r"^[a-zA-Z0-9-_.]+$")
ACTION_RE = re.compile(r"^(lambda:[*]|lambda:[a-zA-Z]+|[*])$")
ARN_RE = re.compile(r"^arn:(aws[a-zA-Z0-9-]*):([a-zA-Z0-9\-])+:([a-z]{2}(-gov)?-[a-z]+-\d{1})?:(\d{12})?:(.*)$")
OPTIONAL_MEMBERS = {  # body key -> (member name in messages, pattern, pattern as Lambda prints it)
    "SourceArn": ("sourceArn", ARN_RE, r"arn:(aws[a-zA-Z0-9-]*):([a-zA-Z0-9\-])+:([a-z]{2}(-gov)?-[a-z]+-\d{1})?:(\d{12})?:(.*)"),
    "SourceAccount": ("sourceAccount", re.compile(r"^\d{12}$"), r"\d{12}"),
    "EventSourceToken": ("eventSourceToken", re.compile(r"^[a-zA-Z0-9._\-]{0,256}$"), r"[a-zA-Z0-9._\-]+"),
    "PrincipalOrgID": ("principalOrgID", re.compile(r"^o-[a-z0-9]{10,32}$"), r"o-[a-z0-9]{10,32}"),
}
REVISION_MISMATCH = "The Revision Id provided does not match the latest Revision Id. Call the {api} API to retrieve the latest Revision Id"
NO_RESOURCE = "The resource you requested does not exist."


def policy_key(qualifier: str | None) -> str:
    """The registry key of the policy a qualifier addresses ('' = unqualified / $LATEST)."""
    return "" if qualifier in (None, LATEST) else str(qualifier)


class Permissions:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    # -- resolution ------------------------------------------------------------------------
    def _target_revision(self, name: str, qualifier: str | None) -> str:
        """The RevisionId of what `qualifier` names (raising Lambda's not-found errors)."""
        arn = self.registry.function_arn(name, qualifier)
        if qualifier is None or qualifier == LATEST:
            return self.registry.get_version(name, LATEST).revision_id
        if qualifier.isdigit():
            try:
                return self.registry.get_version(name, qualifier).revision_id
            except NotFound as exc:
                raise NotFound(f"Function not found: {arn}") from exc
        if not re.fullmatch(r"[a-zA-Z0-9-_]+", qualifier):
            self.registry.function_info(name)
            raise NotFound(f"Function not found: {arn}")
        try:
            return self.registry.get_alias(name, qualifier).revision_id
        except NotFound as exc:
            self.registry.function_info(name)
            raise NotFound(f"Cannot find alias arn: {arn}") from exc

    # -- operations ------------------------------------------------------------------------
    def add(self, name: str, qualifier: str | None, body: Mapping[str, Any]) -> dict[str, Any]:
        """AddPermission: append a statement; returns it (the response's ``Statement``). The
        read-modify-write runs in one transaction holding the function's row lock (two nodes
        adding statements at once both keep theirs)."""
        with self.registry.transaction(name):
            return self._add(name, qualifier, body)

    def _add(self, name: str, qualifier: str | None, body: Mapping[str, Any]) -> dict[str, Any]:
        if qualifier == LATEST:
            raise InvalidParameterValue("We currently do not support adding policies for $LATEST.")
        sid = check.require(body, "StatementId", "statementId")
        action = check.require(body, "Action", "action")
        principal = check.require(body, "Principal", "principal")
        _validate_members(sid, action, principal, body)
        try:
            self.registry.function_info(name)
        except NotFound as exc:
            raise NotFound(f"Function not found: {self.registry.function_arn(name, qualifier)}") from exc
        target_revision = self._target_revision(name, qualifier)
        key = policy_key(qualifier)
        current = self.registry.policy(name, key)
        revision_id = body.get("RevisionId")
        if revision_id is not None and revision_id != (current.revision_id if current else target_revision):
            raise PreconditionFailed(REVISION_MISMATCH.format(api="GetPolicy"))
        statements = list(current.statements) if current else []
        if sid in {s.get("Sid") for s in statements}:
            raise Conflict(
                f"The statement id ({sid}) provided already exists. Please provide a new statement id, or remove the existing statement."
            )
        element = policy.principal_element(principal)
        if element is None:
            raise InvalidParameterValue("The provided principal was invalid. Please check the principal and try again.")
        statement = _statement(sid, action, element, self.registry.function_arn(name, qualifier), body)
        statements.append(statement)
        size = len(json.dumps(policy.document(statements)))
        if size > MAX_POLICY_BYTES:
            raise PolicyLengthExceeded(f"The final policy size ({size}) is bigger than the limit ({MAX_POLICY_BYTES}).")
        self.registry.save_policy(name, key, statements)
        return statement

    def remove(self, name: str, qualifier: str | None, sid: str, revision_id: str | None) -> None:
        """RemovePermission: drop statement `sid` (and the policy with its last statement), in
        one transaction holding the function's row lock."""
        with self.registry.transaction(name):
            self._remove(name, qualifier, sid, revision_id)

    def _remove(self, name: str, qualifier: str | None, sid: str, revision_id: str | None) -> None:
        if len(sid) > 100 or not REMOVE_STATEMENT_ID_RE.match(sid):
            raise check.constraint_error(sid, "statementId", "Member must satisfy regular expression pattern: ([a-zA-Z0-9-_.]+)")
        try:
            self.registry.function_info(name)
        except NotFound as exc:
            raise NotFound(f"No policy found for: {self.registry.function_arn(name)}") from exc
        self._target_revision(name, qualifier)
        key = policy_key(qualifier)
        current = self.registry.policy(name, key)
        if current is None:
            raise NotFound("No policy is associated with the given resource.")
        if sid not in {s.get("Sid") for s in current.statements}:
            raise NotFound(f"Statement {sid} is not found in resource policy.")
        if revision_id is not None and revision_id != current.revision_id:
            raise PreconditionFailed(REVISION_MISMATCH.format(api="GetFunction/GetAlias"))
        self.registry.save_policy(name, key, [s for s in current.statements if s.get("Sid") != sid])

    def get(self, name: str, qualifier: str | None) -> tuple[dict[str, Any], str]:
        """GetPolicy: ``(policy document, revision id)``."""
        try:
            self.registry.function_info(name)
        except NotFound as exc:
            raise NotFound(NO_RESOURCE) from exc
        current = self.registry.policy(name, policy_key(qualifier))
        if current is None:
            raise NotFound(NO_RESOURCE)
        return policy.document(current.statements), current.revision_id

    def statements(self, name: str, qualifier: str | None) -> list[dict[str, Any]]:
        """The statements governing an invoke of `name` at `qualifier` (none if it has no policy)."""
        current = self.registry.policy(name, policy_key(qualifier))
        return list(current.statements) if current else []


def _validate_members(sid: object, action: object, principal: object, body: Mapping[str, Any]) -> None:
    if not isinstance(sid, str) or not 1 <= len(sid) <= 100 or not STATEMENT_ID_RE.match(sid):
        raise check.constraint_error(sid, "statementId", "Member must satisfy regular expression pattern: ([a-zA-Z0-9-_]+)")
    if not isinstance(action, str) or not ACTION_RE.match(action):
        raise check.constraint_error(action, "action", "Member must satisfy regular expression pattern: (lambda:[*]|lambda:[a-zA-Z]+|[*])")
    if not isinstance(principal, str) or not principal or any(c.isspace() for c in principal):
        raise check.constraint_error(principal, "principal", "Member must satisfy regular expression pattern: [^\\s]+")
    for key, (member, pattern, shown) in OPTIONAL_MEMBERS.items():
        value = body.get(key)
        if value is not None and (not isinstance(value, str) or not pattern.match(value)):
            raise check.constraint_error(value, member, f"Member must satisfy regular expression pattern: {shown}")
    auth_type = body.get("FunctionUrlAuthType")
    if auth_type is not None and auth_type not in ("NONE", "AWS_IAM"):
        raise check.constraint_error(auth_type, "functionUrlAuthType", "Member must satisfy enum value set: [NONE, AWS_IAM]")


def _statement(sid: str, action: str, principal: object, resource: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The statement as Lambda writes it (member order as GetPolicy returns it)."""
    statement: dict[str, Any] = {"Sid": sid, "Effect": "Allow", "Principal": principal, "Action": action, "Resource": resource}
    equals: dict[str, str] = {}
    if body.get("FunctionUrlAuthType"):
        equals["lambda:FunctionUrlAuthType"] = body["FunctionUrlAuthType"]
    if body.get("PrincipalOrgID"):
        equals["aws:PrincipalOrgID"] = body["PrincipalOrgID"]
    if body.get("SourceAccount"):
        equals["AWS:SourceAccount"] = body["SourceAccount"]
    if body.get("EventSourceToken"):
        equals["lambda:EventSourceToken"] = body["EventSourceToken"]
    condition: dict[str, Any] = {}
    if equals:
        condition["StringEquals"] = equals
    if body.get("SourceArn"):
        condition["ArnLike"] = {"AWS:SourceArn": body["SourceArn"]}
    if body.get("InvokedViaFunctionUrl"):
        condition["Bool"] = {"lambda:InvokedViaFunctionUrl": "true"}
    if condition:
        statement["Condition"] = condition
    return statement
