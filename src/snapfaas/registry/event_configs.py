"""``FunctionEventInvokeConfig`` operations (Put/Update/Get/Delete/List), with Lambda's rules.

A configuration belongs to one qualifier of a function: ``$LATEST`` (also what an unqualified
name means), a version number or an alias name. Put replaces the whole configuration; Update
changes only the members it is given and fails if there is none yet. Configurations go away
with their function, version or alias (registry cascade). Messages are Lambda's (recorded).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

from snapfaas.errors import InvalidParameterValue, NotFound
from snapfaas.registry import validation as check
from snapfaas.registry.db import Registry
from snapfaas.registry.model import LATEST, EventInvokeConfig
from snapfaas import destinations


class EventConfigs:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        # arn:aws:lambda:<region>:<account>:function:
        parts = registry.arn_prefix.split(":")
        self.region, self.account = parts[3], parts[4]

    def _missing_config(self, function: str, qualifier: str) -> NotFound:
        return NotFound(f"The function {self.registry.function_arn(function, qualifier)} doesn't have an EventInvokeConfig")

    def _require_target(self, function: str, qualifier: str) -> None:
        try:
            self.registry.resolve(function, qualifier)
        except NotFound as exc:
            raise NotFound("The function doesn't exist.") from exc

    def _check_destination(self, function: str, arn: str) -> None:
        target = destinations.parse(arn, self.region, self.account)
        if isinstance(target, destinations.FunctionDestination):
            if target.name == function:
                raise InvalidParameterValue("You can't specify the function as a destination for itself.")
            try:
                self.registry.resolve(target.name, target.qualifier)
            except NotFound as exc:
                raise InvalidParameterValue(f"The destination ARN {arn} is invalid.") from exc

    def _apply(self, config: EventInvokeConfig, body: Mapping[str, Any]) -> None:
        if body.get("MaximumRetryAttempts") is not None:
            config.max_retry_attempts = check.maximum_retry_attempts(body["MaximumRetryAttempts"])
        if body.get("MaximumEventAgeInSeconds") is not None:
            config.max_event_age_s = check.maximum_event_age(body["MaximumEventAgeInSeconds"])
        if body.get("DestinationConfig") is not None:
            given = check.destination_config(body["DestinationConfig"])
            if "OnSuccess" in given:
                config.on_success = given["OnSuccess"]
            if "OnFailure" in given:
                config.on_failure = given["OnFailure"]
        config.last_modified = time.time()

    def _validated(self, function: str, qualifier: str, body: Mapping[str, Any],
                   base: EventInvokeConfig | None) -> EventInvokeConfig:
        if not any(body.get(k) is not None for k in check.EVENT_CONFIG_MEMBERS):
            raise InvalidParameterValue("You must specify at least one of error handling or destination setting.")
        config = dataclasses.replace(base) if base is not None else EventInvokeConfig(function, qualifier)
        self._apply(config, body)
        return config

    def put(self, function: str, qualifier: str | None, body: Mapping[str, Any]) -> EventInvokeConfig:
        qualifier = qualifier or LATEST
        config = self._validated(function, qualifier, body, None)
        self._require_target(function, qualifier)
        for arn in (config.on_success, config.on_failure):
            if arn:
                self._check_destination(function, arn)
        return self._store(config)

    def update(self, function: str, qualifier: str | None, body: Mapping[str, Any]) -> EventInvokeConfig:
        qualifier = qualifier or LATEST
        if not any(body.get(k) is not None for k in check.EVENT_CONFIG_MEMBERS):
            raise InvalidParameterValue("You must specify at least one of error handling or destination setting.")
        self._require_target(function, qualifier)
        current = self.registry.get_event_config(function, qualifier)
        if current is None:
            raise self._missing_config(function, qualifier)
        config = self._validated(function, qualifier, body, current)
        for arn in (config.on_success, config.on_failure):
            if arn:
                self._check_destination(function, arn)
        return self._store(config)

    def _store(self, config: EventInvokeConfig) -> EventInvokeConfig:
        try:
            return self.registry.put_event_config(config)
        except NotFound as exc:  # deleted between the checks and the write
            raise NotFound("The function doesn't exist.") from exc

    def get(self, function: str, qualifier: str | None) -> EventInvokeConfig:
        qualifier = qualifier or LATEST
        config = self.registry.get_event_config(function, qualifier)
        if config is None:
            raise self._missing_config(function, qualifier)
        return config

    def delete(self, function: str, qualifier: str | None) -> None:
        qualifier = qualifier or LATEST
        if not self.registry.delete_event_config(function, qualifier):
            raise self._missing_config(function, qualifier)

    def list(self, function: str) -> list[EventInvokeConfig]:
        try:
            return self.registry.list_event_configs(function)
        except NotFound as exc:
            raise NotFound("The function doesn't exist.") from exc
