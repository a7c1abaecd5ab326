"""The registry's domain records and the version state machine."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import uuid
from typing import Any

from snapfaas.errors import ServiceError

LATEST = "$LATEST"


class State(str, enum.Enum):
    """Lambda's function/version `State`. Transitions are checked by `FunctionVersion.move_to`."""

    PENDING = "Pending"
    ACTIVE = "Active"
    INACTIVE = "Inactive"
    FAILED = "Failed"


ALLOWED_MOVES: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.ACTIVE, State.FAILED, State.PENDING}),
    State.ACTIVE: frozenset({State.PENDING, State.INACTIVE, State.FAILED, State.ACTIVE}),
    State.INACTIVE: frozenset({State.PENDING, State.ACTIVE, State.FAILED}),
    State.FAILED: frozenset({State.PENDING, State.ACTIVE, State.FAILED}),
}


def now_iso() -> str:
    """Lambda's LastModified format: ``2026-11-27T12:00:50.123+0000``."""
    stamp = dt.datetime.now(dt.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}+0000"


def new_revision() -> str:
    return str(uuid.uuid4())


@dataclasses.dataclass
class FunctionVersion:
    """One version of a function ($LATEST or a published number) with its full configuration."""

    name: str
    version: str
    runtime: str
    handler: str
    role: str
    code_digest: str
    code_sha256: str
    code_size: int
    description: str = ""
    memory_size: int = 128
    timeout: int = 3
    environment: dict[str, str] = dataclasses.field(default_factory=dict)
    environment_set: bool = False  # Environment was given (even empty): Lambda then echoes it
    ephemeral_storage: int = 512
    snap_start: str = "None"
    architectures: list[str] = dataclasses.field(default_factory=lambda: ["x86_64"])
    # LoggingConfig: levels only with the JSON format; log_group None = /aws/lambda/<name>
    log_format: str = "Text"
    application_log_level: str | None = None
    system_log_level: str | None = None
    log_group: str | None = None
    # the function's layers in order: {"arn", "digest", "size" (zip bytes), "unzipped" (bytes)}
    layers: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    revision_id: str = dataclasses.field(default_factory=new_revision)
    last_modified: str = dataclasses.field(default_factory=now_iso)
    state: State = State.PENDING
    state_reason: str | None = "The function is being created."
    state_reason_code: str | None = "Creating"
    last_update_status: str | None = None
    last_update_status_reason: str | None = None
    last_update_status_reason_code: str | None = None
    snapshot_id: str | None = None
    last_invoked: float | None = None  # epoch seconds, persisted coarsely (SnapStart retention)
    # A published version's Description may come from PublishVersion; this keeps the $LATEST
    # description it was published from, which is what "unchanged since" compares.
    source_description: str | None = None

    @property
    def is_latest(self) -> bool:
        return self.version == LATEST

    @property
    def optimization_status(self) -> str:
        """SnapStart is applied only to published versions of functions that ask for it."""
        if self.is_latest or self.snap_start != "PublishedVersions":
            return "Off"
        return "On" if self.state in (State.ACTIVE, State.INACTIVE) else "Off"

    @property
    def uses_snapshot(self) -> bool:
        """Invocations of this version resume from its snapshot instead of running init."""
        return not self.is_latest and self.snap_start == "PublishedVersions"

    @property
    def logging(self) -> tuple[str, str | None, str | None, str | None]:
        """(LogFormat, ApplicationLogLevel, SystemLogLevel, LogGroup) as stored."""
        return self.log_format, self.application_log_level, self.system_log_level, self.log_group

    @property
    def log_group_name(self) -> str:
        return self.log_group or f"/aws/lambda/{self.name}"

    @property
    def layer_digests(self) -> list[str]:
        return [str(layer["digest"]) for layer in self.layers]

    @property
    def opt_tree(self) -> str | None:
        """Name of the merged tree of this version's layers (mounted at /opt), or None without
        layers. Named by the ordered layer contents, so versions with the same layers share it."""
        if not self.layers:
            return None
        return "opt-" + hashlib.sha256("\n".join(self.layer_digests).encode()).hexdigest()[:40]

    def tree_names(self) -> list[str]:
        """The extracted trees (per id slice) this version's environments use."""
        names = [self.code_digest, *self.layer_digests]
        if self.opt_tree is not None:
            names.append(self.opt_tree)
        return names

    def move_to(self, state: State, reason: str | None = None, code: str | None = None) -> None:
        if state not in ALLOWED_MOVES[self.state]:
            raise ServiceError(f"illegal state move for {self.name}:{self.version}: {self.state.value} -> {state.value}")
        self.state, self.state_reason, self.state_reason_code = state, reason, code

    def config_fingerprint(self) -> tuple[Any, ...]:
        """What PublishVersion compares to decide whether anything changed since the last version."""
        description = self.description if self.source_description is None else self.source_description
        return (
            self.code_sha256, self.runtime, self.handler, self.role, description, self.memory_size,
            self.timeout, tuple(sorted(self.environment.items())), self.ephemeral_storage, self.snap_start,
            self.logging, tuple(self.architectures), tuple(str(layer["arn"]) for layer in self.layers),
        )

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FunctionVersion:
        data = dict(data)
        data["state"] = State(data["state"])
        return cls(**data)


@dataclasses.dataclass
class Alias:
    function: str
    name: str
    version: str
    description: str = ""
    revision_id: str = dataclasses.field(default_factory=new_revision)
    routing: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class FunctionInfo:
    """Per-function (not per-version) facts."""

    name: str
    reserved_concurrency: int | None
    last_version: int


@dataclasses.dataclass
class EventInvokeConfig:
    """A ``FunctionEventInvokeConfig``: asynchronous-invocation settings of one function
    qualifier ($LATEST for the unqualified function, a version number or an alias name).
    None means "not set" (the default applies and the field is not echoed)."""

    function: str
    qualifier: str
    max_retry_attempts: int | None = None
    max_event_age_s: int | None = None
    on_success: str | None = None
    on_failure: str | None = None
    last_modified: float = 0.0  # epoch seconds (the API's LastModified is a timestamp)
