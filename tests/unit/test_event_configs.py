"""FunctionEventInvokeConfig rules (snapfaas.registry.event_configs) on a real SQLite registry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from snapfaas.errors import InvalidParameterValue, NotFound, ValidationError
from snapfaas.registry.db import Registry
from snapfaas.registry.event_configs import EventConfigs
from snapfaas.registry.model import LATEST, Alias, FunctionVersion, State

PREFIX = "arn:aws:lambda:us-east-1:000000000000:function:"
SINK = PREFIX + "sink"
FILE = "arn:aws:snapfaas:us-east-1:000000000000:file/failures"


def make(reg: Registry, name: str) -> None:
    reg.create_function(FunctionVersion(name=name, version=LATEST, runtime="python3.12", handler="app.handler",
                                        role="arn:aws:iam::000000000000:role/r", code_digest="d",
                                        code_sha256="s", code_size=1))
    reg.set_state(name, LATEST, State.ACTIVE, None, None)


@pytest.fixture
def reg(registry_target: Path | str) -> Iterator[Registry]:
    registry = Registry(registry_target, PREFIX)
    make(registry, "f")
    make(registry, "sink")
    yield registry
    registry.close()


def test_put_replaces_update_merges(reg: Registry) -> None:
    configs = EventConfigs(reg)
    configs.put("f", None, {"MaximumRetryAttempts": 2, "MaximumEventAgeInSeconds": 60})
    put = configs.put("f", None, {"MaximumRetryAttempts": 0})
    assert (put.qualifier, put.max_retry_attempts, put.max_event_age_s) == (LATEST, 0, None)
    updated = configs.update("f", LATEST, {"MaximumEventAgeInSeconds": 120,
                                           "DestinationConfig": {"OnFailure": {"Destination": FILE}}})
    assert (updated.max_retry_attempts, updated.max_event_age_s, updated.on_failure, updated.on_success) == \
        (0, 120, FILE, None)
    assert configs.get("f", None) == updated


def test_validation_and_lambda_messages(reg: Registry) -> None:
    configs = EventConfigs(reg)
    with pytest.raises(InvalidParameterValue, match="at least one of error handling or destination setting"):
        configs.put("missing", None, {})
    with pytest.raises(ValidationError, match="'3' at 'maximumRetryAttempts'.*less than or equal to 2"):
        configs.put("f", None, {"MaximumRetryAttempts": 3})
    with pytest.raises(ValidationError, match="'59' at 'maximumEventAgeInSeconds'.*greater than or equal to 60"):
        configs.put("f", None, {"MaximumEventAgeInSeconds": 59})
    with pytest.raises(ValidationError, match="21601"):
        configs.put("f", None, {"MaximumEventAgeInSeconds": 21601})
    with pytest.raises(NotFound, match="^The function doesn't exist.$"):
        configs.put("missing", None, {"MaximumRetryAttempts": 1})
    with pytest.raises(NotFound, match="^The function doesn't exist.$"):
        configs.put("f", "nosuchalias", {"MaximumRetryAttempts": 1})
    with pytest.raises(InvalidParameterValue, match="as a destination for itself"):
        configs.put("f", None, {"DestinationConfig": {"OnSuccess": {"Destination": PREFIX + "f"}}})
    with pytest.raises(InvalidParameterValue, match=f"The destination ARN {PREFIX}nope is invalid."):
        configs.put("f", None, {"DestinationConfig": {"OnSuccess": {"Destination": PREFIX + "nope"}}})
    with pytest.raises(ValidationError, match="destinationConfig.onFailure.destination"):
        configs.put("f", None, {"DestinationConfig": {"OnFailure": {"Destination": "arn:x:_-/!lambda:1"}}})
    with pytest.raises(NotFound, match=f"The function {PREFIX}f:\\$LATEST doesn't have an EventInvokeConfig"):
        configs.update("f", None, {"MaximumRetryAttempts": 1})
    with pytest.raises(NotFound, match=f"The function {PREFIX}f:\\$LATEST doesn't have an EventInvokeConfig"):
        configs.get("f", None)
    with pytest.raises(NotFound, match=f"The function {PREFIX}f:\\$LATEST doesn't have an EventInvokeConfig"):
        configs.delete("f", None)
    with pytest.raises(NotFound, match="^The function doesn't exist.$"):
        configs.list("missing")
    ok = configs.put("f", None, {"DestinationConfig": {"OnSuccess": {"Destination": SINK}, "OnFailure": {}}})
    assert ok.on_success == SINK and ok.on_failure is None


def test_configs_go_with_their_version_alias_and_function(reg: Registry) -> None:
    configs = EventConfigs(reg)
    version, _ = reg.publish("f", None, None, None)
    reg.create_alias(Alias("f", "live", version.version))
    for qualifier in (None, version.version, "live"):
        configs.put("f", qualifier, {"MaximumRetryAttempts": 1})
    assert [c.qualifier for c in configs.list("f")] == [LATEST, "1", "live"]
    reg.delete_alias("f", "live")
    reg.delete_version("f", "1")
    assert [c.qualifier for c in configs.list("f")] == [LATEST]
    seen: list[str] = []
    reg.observers.append(seen.append)
    reg.delete_function("f")
    assert seen == ["f"]
    make(reg, "f")
    assert configs.list("f") == []
