"""Who is calling the API: the operator, or a function through its environment's credentials.

The SigV4 verifier resolves every signed request to one of these. The operator's keys
(``SNAPFAAS_ACCESS_KEY_ID``/``SECRET`` or the generated pair) may call everything; the
temporary credentials of an execution environment carry the function they were issued to and
its execution role (the function's ``Role``), and are authorized by `snapfaas.policy`.
"""

from __future__ import annotations

import dataclasses
import re

ROLE_ARN_RE = re.compile(r"^arn:(?P<partition>aws[a-zA-Z-]*)?:iam::(?P<account>\d{12}):role/(?:.*/)?(?P<name>[^/]+)$")


@dataclasses.dataclass(frozen=True)
class Operator:
    """The holder of the server's long-term keys: the whole API."""

    access_key_id: str


@dataclasses.dataclass(frozen=True)
class FunctionPrincipal:
    """An execution environment of `function`, acting as its execution role `role`.

    `account` is the server's account id, used when the role ARN does not name one.
    """

    function: str
    role: str
    account: str = "000000000000"

    @property
    def role_account(self) -> str:
        match = ROLE_ARN_RE.match(self.role)
        return match["account"] if match else self.account

    @property
    def partition(self) -> str:
        match = ROLE_ARN_RE.match(self.role)
        return (match["partition"] or "aws") if match else "aws"

    @property
    def role_name(self) -> str:
        match = ROLE_ARN_RE.match(self.role)
        return match["name"] if match else self.role.rsplit("/", 1)[-1]

    @property
    def arn(self) -> str:
        """The assumed-role session ARN Lambda's functions act as (session name = function name)."""
        return f"arn:{self.partition}:sts::{self.role_account}:assumed-role/{self.role_name}/{self.function}"


Principal = Operator | FunctionPrincipal
