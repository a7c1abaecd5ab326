"""Function tags (TagResource, UntagResource, ListTags, CreateFunction's ``Tags``).

Tags belong to the function, not to a version or alias (Lambda refuses qualified ARNs), and are
kept in the registry's ``function_tags`` table (deleted with the function). Changing them mints
a new RevisionId for $LATEST, as recorded from AWS. Validation is pure, with Lambda's wording
where it was recorded (limit, empty map, qualified ARN, ARN pattern).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from snapfaas.errors import InvalidParameterValue, NotFound, ValidationError
from sqlalchemy import select

from snapfaas.registry.db import Registry, upsert
from snapfaas.registry.schema import function_tags
from snapfaas.registry.model import LATEST, new_revision

MAX_TAGS = 50
MAX_KEY = 128
MAX_VALUE = 256
RESOURCE_PATTERN = (
    r"arn:(aws[a-zA-Z-]*):lambda:(eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:\d{12}:"
    r"(function:[a-zA-Z0-9-_]+(:(\$LATEST|[a-zA-Z0-9-_]+))?|layer:([a-zA-Z0-9-_]+)|code-signing-config:csc-[a-z0-9]{17}"
    r"|event-source-mapping:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|capacity-provider:[a-zA-Z0-9-_]+)"
)
RESOURCE_RE = re.compile(RESOURCE_PATTERN)
QUALIFIED = "Tags on function aliases and versions are not supported. Please specify a function ARN."
TOO_MANY = "Number of tags exceeds resource tag limit."
OTHER_RESOURCES = {  # resource types this server has none of: Lambda's not-found wording
    "event-source-mapping": "Event source mapping not found",
    "capacity-provider": "Capacity provider not found",
    "code-signing-config": "Code signing config not found",
    "layer": "Layer not found",
}


def _pairs(tags: object) -> dict[str, str]:
    """Keys 1-128 characters, values 0-256, no ``aws:`` prefix (reserved for AWS's own tags)."""
    if not isinstance(tags, Mapping):
        raise InvalidParameterValue("Tags must be a map of strings to strings.")
    out: dict[str, str] = {}
    for key, value in tags.items():
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY:
            raise InvalidParameterValue(f"Tag key '{key}' must be between 1 and {MAX_KEY} characters long.")
        if not isinstance(value, str) or len(value) > MAX_VALUE:
            raise InvalidParameterValue(f"Tag value of key '{key}' must be a string of at most {MAX_VALUE} characters.")
        if key.lower().startswith("aws:"):
            raise InvalidParameterValue(f"Tag keys prefixed with 'aws:' are reserved for AWS use: {key}")
        out[key] = value
    return out


def create_tags(tags: object) -> dict[str, str]:
    """CreateFunction's ``Tags`` (absent or empty: none)."""
    if tags is None:
        return {}
    out = _pairs(tags)
    if len(out) > MAX_TAGS:
        raise InvalidParameterValue(TOO_MANY)
    return out


def function_of(resource: str, arn_prefix: str) -> str:
    """The function name a taggable resource ARN names; Lambda's errors for a bad ARN, a
    qualified function ARN, or a resource type this server has none of."""
    if not 1 <= len(resource) <= 256 or not RESOURCE_RE.fullmatch(resource):
        raise ValidationError(f"1 validation error detected: Value '{resource}' at 'resource' failed to satisfy "
                              f"constraint: Member must satisfy regular expression pattern: {RESOURCE_PATTERN}")
    kind_and_rest = resource.split(":", 5)[5]
    kind, _, rest = kind_and_rest.partition(":")
    if kind != "function":
        raise NotFound(f"{OTHER_RESOURCES[kind]}: {resource}")
    name, _, qualifier = rest.partition(":")
    if qualifier:
        raise InvalidParameterValue(QUALIFIED)
    if not resource.startswith(arn_prefix):  # another region or account: no such function here
        raise NotFound(f"Function not found: {resource}")
    return name


class FunctionTags:
    """Tags of functions over the registry database (stateless)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def get(self, function: str) -> dict[str, str]:
        """The function's tags; NotFound (Lambda's unqualified message) if it does not exist."""
        self.registry.function_info(function)
        rows = self.registry.rows(select(function_tags.c.tags).where(function_tags.c.function == function))
        return dict(json.loads(rows[0][0])) if rows else {}

    def tag(self, function: str, tags: object) -> dict[str, str]:
        """Add or overwrite `tags` (a non-empty map); at most 50 in all."""
        if isinstance(tags, Mapping) and not tags:
            raise InvalidParameterValue("An error occurred and the request cannot be processed.")
        pairs = _pairs(tags)
        return self._change(function, lambda current: {**current, **pairs})

    def untag(self, function: str, keys: list[str]) -> dict[str, str]:
        """Remove `keys` (absent ones are ignored, as on Lambda)."""
        return self._change(function, lambda current: {k: v for k, v in current.items() if k not in keys})

    def _change(self, function: str, change: Any) -> dict[str, str]:
        with self.registry.transaction(function) as db:  # the function's row locked: atomic across nodes
            current = self.get(function)
            updated = change(current)
            if len(updated) > MAX_TAGS:
                raise InvalidParameterValue(TOO_MANY)
            upsert(db, function_tags, {"function": function, "tags": json.dumps(updated)}, ("function",))
            # the same transaction: tags and $LATEST's new RevisionId commit together
            self.registry.update_version(function, LATEST, lambda v: setattr(v, "revision_id", new_revision()))
        return updated
