"""Control-plane operations: validate, store, and drive versions through their states.

`ControlPlane` is the one object `api/` calls for everything except Invoke. Mutations are
validated completely before anything is written, then committed in one registry transaction,
so a rejected or interrupted request changes nothing. Slow follow-up work (bringing a new
function or version to Active, finishing an update) runs in background tasks that survive
only as state in the registry: `resume` restarts them after a daemon restart.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from snapfaas.config import AWS_SNAPSTART_RUNTIMES
from snapfaas.errors import Conflict, InvalidParameterValue, NotFound, ServiceUnavailable, SnapfaasError
from snapfaas.registry import validation as check
from snapfaas.registry.artifacts import ArtifactStore, CodeArtifact
from snapfaas.registry.db import Registry
from snapfaas.registry.event_configs import EventConfigs
from snapfaas.registry import layers as layer_check
from snapfaas.registry import tags as tag_check
from snapfaas.registry.layers import LayerRegistry, LayerVersion
from snapfaas.registry.packages import CodeUnavailable
from snapfaas.registry.model import LATEST, Alias, FunctionVersion, State, new_revision, now_iso
from snapfaas.sandbox.interpreter import InterpreterRegistry

logger = logging.getLogger(__name__)
Retire = Callable[[str, str | None], Awaitable[None]]
Settle = Callable[[FunctionVersion], Awaitable[None]]


def _noop_retire(function: str, version: str | None) -> Awaitable[None]:
    return asyncio.sleep(0)


class ControlPlane:
    def __init__(
        self,
        registry: Registry,
        artifacts: ArtifactStore,
        interpreters: InterpreterRegistry,
        retire: Retire = _noop_retire,
    ) -> None:
        self.registry = registry
        self.artifacts = artifacts
        self.interpreters = interpreters
        self.retire = retire
        self.snapstart_runtimes: tuple[str, ...] = AWS_SNAPSTART_RUNTIMES  # the server sets --snapstart-runtimes
        self.event_configs = EventConfigs(registry)  # PutFunctionEventInvokeConfig and friends
        self.layers = LayerRegistry(registry)  # PublishLayerVersion and friends
        self.publishers: dict[str, Settle] = {}
        self.dropped: Callable[[list[FunctionVersion]], None] = lambda versions: None  # deleted versions' snapshots
        # whether files or processes of a released host id slice remain (default: assume so,
        # never reclaim); the server wires the stores' and the process table's checks
        self.slice_in_use: Callable[[int], bool] = lambda index: True
        # schedules a collection of the store origin (the server wires the snapshot manager's
        # `collect_soon`): code packages no version references leave the origin there
        self.collect_store: Callable[[], None] = lambda: None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ingests = 0  # mutations between code ingest and commit (see `_ingesting`)
        self._gc_pending = False

    # -- background settling ---------------------------------------------------------------
    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _activate(self, name: str, version: str) -> None:
        """Pending -> Active (or Failed), after checking the runtime and the code tree; a
        published SnapStart version goes through its publisher (which takes the snapshot)."""
        await asyncio.sleep(0)
        try:
            record = self.registry.get_version(name, version)
            await self._stage(record)
            publisher = self.publishers.get(record.snap_start) if not record.is_latest else None
            if publisher is not None and self._readiness_problem(record) is None:
                await publisher(record)
                return
            self._settle(name, version)
        except NotFound:
            return  # deleted meanwhile

    def _settle(self, name: str, version: str) -> FunctionVersion:
        """Move a Pending version to Active, or to Failed naming the readiness problem, now."""
        reason = self._readiness_problem(self.registry.get_version(name, version))
        change = self._make_active if reason is None else (lambda v: self._fail(v, reason))
        return self.registry.update_version(name, version, change)

    @staticmethod
    def _fail(v: FunctionVersion, reason: tuple[str, str]) -> None:
        v.move_to(State.FAILED, reason[1], reason[0])
        if v.is_latest:
            v.revision_id = new_revision()

    @staticmethod
    def _make_active(v: FunctionVersion) -> None:
        """State transitions mint a new RevisionId for $LATEST only; a published version keeps
        the RevisionId it was published with (as on Lambda)."""
        v.move_to(State.ACTIVE)
        if v.is_latest:
            v.revision_id = new_revision()
        if v.is_latest or v.last_update_status is None:
            v.last_update_status = "Successful"
            v.last_update_status_reason = v.last_update_status_reason_code = None

    async def _finish_update(self, name: str) -> None:
        """LastUpdateStatus InProgress -> Successful (or Failed) for $LATEST."""
        await asyncio.sleep(0)
        try:
            record = self.registry.get_version(name, LATEST)
        except NotFound:
            return
        await self._stage(record)
        reason = self._readiness_problem(record)

        def finish(v: FunctionVersion) -> None:
            v.revision_id = new_revision()
            if reason is None:
                v.last_update_status, v.last_update_status_reason, v.last_update_status_reason_code = "Successful", None, None
            else:
                v.last_update_status, v.last_update_status_reason_code, v.last_update_status_reason = "Failed", *reason

        self.registry.update_version(name, LATEST, finish)
        await self.retire(name, LATEST)

    async def _stage(self, record: FunctionVersion) -> None:
        """Extract the version's code tree in a worker thread (on a node without the package
        it comes from the store origin), so that the readiness check after it, on the event
        loop, finds it on disk. A failure is the readiness check's to report (it tries again)."""
        slice_index = self.registry.id_slice(record.name)
        try:
            await asyncio.to_thread(self.artifacts.tree, record.code_digest, slice_index)
        except (CodeUnavailable, ServiceUnavailable, InvalidParameterValue) as exc:
            logger.info("code of %s:%s could not be staged (%s); the readiness check reports it",
                        record.name, record.version, exc.message)

    def _readiness_problem(self, record: FunctionVersion) -> tuple[str, str] | None:
        try:
            self.interpreters.resolve(record.runtime)
        except SnapfaasError as exc:
            return "InvalidRuntime", exc.message
        try:
            tree = self.artifacts.tree(record.code_digest, self.registry.id_slice(record.name))
        except CodeUnavailable as exc:  # missing or corrupt at the origin: Lambda's reason for an unusable zip
            return "InvalidZipFileException", exc.message
        except ServiceUnavailable as exc:  # the origin is down: the platform's fault
            return "InternalError", exc.message
        if not tree.is_dir():
            return "InternalError", f"code package {record.code_sha256} is missing from the artifact store"
        return None

    def resume(self) -> None:
        """Restart settling work interrupted by a daemon restart."""
        for record in self.registry.list_all_versions():
            if record.state == State.PENDING:
                self._spawn(self._activate(record.name, record.version), f"activate-{record.name}:{record.version}")
            elif record.is_latest and record.last_update_status == "InProgress":
                self._spawn(self._finish_update(record.name), f"update-{record.name}")

    # -- input parsing ---------------------------------------------------------------------
    async def _code(self, body: Mapping[str, Any], ingested: list[CodeArtifact]) -> CodeArtifact:
        """Decode, validate and store the package in a worker thread (up to 250 MB unzipped:
        never on the event loop). Call inside `_ingesting`, with the list it yields (the
        package is released when the mutation ends). Whether the package holds the
        handler's module is not checked here: as on Lambda, a missing module or a malformed
        handler fails at invoke (Runtime.ImportModuleError / Runtime.MalformedHandlerName)."""
        if "S3Bucket" in body or "S3Key" in body or "ImageUri" in body:
            raise InvalidParameterValue("Only ZipFile code is supported by this server (S3 and image packages are not).")
        raw = body.get("ZipFile")
        if not isinstance(raw, str) or not raw:
            raise InvalidParameterValue("Please provide a source for function code.")
        artifact = await asyncio.to_thread(self._decode_and_ingest, raw)
        ingested.append(artifact)
        return artifact

    def _decode_and_ingest(self, raw: str) -> CodeArtifact:
        """Runs in a worker thread: touches the artifact store only, never the registry."""
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidParameterValue("Could not unzip uploaded file. Please check your file, then try to upload again.") from exc
        return self.artifacts.ingest(data)

    @contextmanager
    def _ingesting(self) -> Iterator[list[CodeArtifact]]:
        """Marks a mutation that ingests code: until it has committed (or failed), artifact
        garbage collection is deferred, so a package extracted in a thread and not yet
        referenced by any version is not collected under it. The packages `_code` puts into
        the yielded list are released to the store collection when the mutation ends
        (`ArtifactStore.release`): the registry then says whether they are used."""
        self._ingests += 1
        ingested: list[CodeArtifact] = []
        try:
            yield ingested
        finally:
            for artifact in ingested:
                self.artifacts.release(artifact.digest)
            self._ingests -= 1
            if self._ingests == 0 and self._gc_pending:
                self._gc_pending = False
                self._collect_garbage()

    def _collect_garbage(self) -> None:
        """`collect_garbage`, or deferred until no ingest is in flight; then a collection of
        the store origin, in the background."""
        if self._ingests:
            self._gc_pending = True
            return
        self.collect_garbage()
        self.collect_store()

    @contextmanager
    def _dropping_on_failure(self, artifact: CodeArtifact) -> Iterator[None]:
        """If the mutation using a freshly ingested `artifact` fails, delete the artifact again
        unless some version already references it (a rejected request leaves nothing behind)."""
        try:
            yield
        except SnapfaasError:
            self._drop_unreferenced(artifact)
            raise

    def _drop_unreferenced(self, artifact: CodeArtifact) -> None:
        if self._ingests > 1:  # another upload may be about to reference the same package
            self._gc_pending = True
        elif artifact.digest not in self.registry.referenced_digests():
            self.artifacts.discard(artifact.digest)
            self.collect_store()  # its upload leaves the origin too

    @staticmethod
    def _apply_config(v: FunctionVersion, body: Mapping[str, Any], interpreters: InterpreterRegistry) -> None:
        if "Runtime" in body:
            v.runtime = check.runtime(body["Runtime"])
            interpreters.resolve(v.runtime)
        if "Handler" in body:
            v.handler = check.handler(body["Handler"])
        if "Role" in body:
            v.role = check.role(body["Role"])
        if "Description" in body:
            v.description = check.description(body["Description"])
        if "MemorySize" in body:
            v.memory_size = check.memory_size(body["MemorySize"])
        if "Timeout" in body:
            v.timeout = check.timeout(body["Timeout"])
        if "Environment" in body:
            v.environment, v.environment_set = check.environment(body["Environment"]), True
        if "EphemeralStorage" in body:
            v.ephemeral_storage = check.ephemeral_storage(body["EphemeralStorage"])
        if "SnapStart" in body:
            v.snap_start = check.snap_start(body["SnapStart"])
        if "LoggingConfig" in body:
            (v.log_format, v.application_log_level, v.system_log_level,
             v.log_group) = check.logging_config(body["LoggingConfig"], v.logging)
        if "Architectures" in body:
            v.architectures = check.architectures(body["Architectures"])

    def _apply_layers(self, v: FunctionVersion, body: Mapping[str, Any]) -> None:
        """``Layers``: validated ARNs of existing layer versions, kept by content in `v`."""
        if "Layers" in body:
            v.layers = self.layers.for_function(layer_check.function_layer_arns(body["Layers"] or []))

    def _check_total_size(self, v: FunctionVersion) -> None:
        """Lambda's limit on code plus layers, extracted (250 MB by default)."""
        limit = self.artifacts.limits.unzipped_bytes
        if not v.layers:
            return  # the code alone was checked at ingest
        total = self.artifacts.unzipped_size(v.code_digest) + sum(int(layer["unzipped"]) for layer in v.layers)
        if total > limit:
            raise InvalidParameterValue(f"Function code combined with layers exceeds the maximum allowed size of "
                                        f"{limit} bytes. The actual size is {total} bytes.")

    def _check_snap_start(self, v: FunctionVersion) -> None:
        """AWS's SnapStart restrictions, for a configuration with SnapStart on."""
        if v.snap_start == "PublishedVersions":
            check.snap_start_support(v.runtime, v.ephemeral_storage, self.snapstart_runtimes)

    # -- functions -------------------------------------------------------------------------
    async def create_function(self, body: Mapping[str, Any]) -> FunctionVersion:
        with self._ingesting() as ingested:
            return await self._create_function(body, ingested)

    async def _create_function(self, body: Mapping[str, Any], ingested: list[CodeArtifact]) -> FunctionVersion:
        name = check.create_function_name(check.require(body, "FunctionName", "functionName"))
        role = check.role(check.require(body, "Role", "role"))
        if body.get("PackageType", "Zip") != "Zip":
            raise InvalidParameterValue("Only PackageType Zip is supported by this server.")
        runtime = check.runtime(check.require(body, "Runtime", "runtime"))
        handler = check.handler(check.require(body, "Handler", "handler"))
        self.interpreters.resolve(runtime)
        draft = FunctionVersion(name=name, version=LATEST, runtime=runtime, handler=handler, role=role,
                                code_digest="", code_sha256="", code_size=0)
        self._apply_config(draft, body, self.interpreters)
        self._check_snap_start(draft)
        self._apply_layers(draft, body)
        tags = tag_check.create_tags(body.get("Tags"))
        code = body.get("Code")
        if not isinstance(code, Mapping):
            raise check.constraint_error("null", "code", "Member must not be null")
        artifact = await self._code(code, ingested)
        draft.code_digest, draft.code_sha256, draft.code_size = artifact.digest, artifact.sha256, artifact.size
        with self._dropping_on_failure(artifact):
            self._check_total_size(draft)
            self.registry.create_function(draft, tags)
        self._spawn(self._activate(name, LATEST), f"activate-{name}")
        if body.get("Publish"):
            published = self._publish_after_settle(name)
            return dataclasses.replace(draft, version=published)
        return draft

    def _publish_after_settle(self, name: str) -> str:
        """Create version 1 right away (Pending); it settles in the background like $LATEST."""
        version, _ = self.registry.publish(name, None, None, None, allow_unsettled=True)
        self._spawn(self._activate(name, version.version), f"activate-{name}:{version.version}")
        return version.version

    async def update_code(self, name: str, body: Mapping[str, Any]) -> FunctionVersion:
        with self._ingesting() as ingested:
            return await self._update_code(name, body, ingested)

    async def _update_code(self, name: str, body: Mapping[str, Any], ingested: list[CodeArtifact]) -> FunctionVersion:
        self._guard_update(self.registry.get_version(name, LATEST))
        architectures = check.architectures(body["Architectures"]) if "Architectures" in body else None
        artifact = await self._code(body, ingested)
        with self._dropping_on_failure(artifact):  # re-checked: deleted or updated while we ingested?
            current = self.registry.get_version(name, LATEST)
            self._guard_update(current)
            self._check_total_size(dataclasses.replace(current, code_digest=artifact.digest))

        def change(v: FunctionVersion) -> None:
            self._guard_update(v)  # again under the row lock: another node may have started an update
            v.code_digest, v.code_sha256, v.code_size = artifact.digest, artifact.sha256, artifact.size
            if architectures is not None:
                v.architectures = architectures
            self._mark_in_progress(v)

        if body.get("DryRun"):
            self._drop_unreferenced(artifact)
            return current
        with self._dropping_on_failure(artifact):
            updated = self.registry.update_version(name, LATEST, change, body.get("RevisionId"))
        self._spawn(self._finish_update(name), f"update-{name}")
        if body.get("Publish"):
            return self._publish_now(name, updated)
        return updated

    def update_configuration(self, name: str, body: Mapping[str, Any]) -> FunctionVersion:
        current = self.registry.get_version(name, LATEST)
        self._guard_update(current)
        draft = dataclasses.replace(current, environment=dict(current.environment))
        self._apply_config(draft, body, self.interpreters)
        self._check_snap_start(draft)
        self._apply_layers(draft, body)
        self._check_total_size(draft)

        def change(v: FunctionVersion) -> None:
            self._guard_update(v)  # again under the row lock: another node may have started an update
            for field in ("runtime", "handler", "role", "description", "memory_size", "timeout", "environment",
                          "environment_set", "ephemeral_storage", "snap_start", "log_format",
                          "application_log_level", "system_log_level", "log_group", "layers"):
                setattr(v, field, getattr(draft, field))
            self._mark_in_progress(v)

        updated = self.registry.update_version(name, LATEST, change, body.get("RevisionId"))
        self._spawn(self._finish_update(name), f"update-{name}")
        return updated

    def _guard_update(self, current: FunctionVersion) -> None:
        if current.state == State.PENDING or current.last_update_status == "InProgress":
            raise Conflict(
                "The operation cannot be performed at this time. An update is in progress for resource: "
                + self.registry.function_arn(current.name)
            )

    @staticmethod
    def _mark_in_progress(v: FunctionVersion) -> None:
        v.last_modified = now_iso()
        v.revision_id = new_revision()
        v.last_update_status = "InProgress"
        v.last_update_status_reason = "The function is being created."
        v.last_update_status_reason_code = "Creating"

    def _publish_now(self, name: str, latest: FunctionVersion) -> FunctionVersion:
        """UpdateFunctionCode(Publish=True): publish the new code without waiting for the update."""
        version, created = self.registry.publish(name, None, None, None, allow_unsettled=True)
        if created:
            self._spawn(self._activate(name, version.version), f"activate-{name}:{version.version}")
        return version

    def publish_version(self, name: str, body: Mapping[str, Any]) -> FunctionVersion:
        description = body.get("Description")
        if description is not None:
            check.description(description)
        self._check_snap_start(self.registry.get_version(name, LATEST))  # the list may have narrowed since
        version, created = self.registry.publish(name, body.get("CodeSha256"), body.get("RevisionId"), description)
        if not created:
            return version
        self.registry.update_version(name, LATEST, lambda v: setattr(v, "revision_id", new_revision()))
        if self.publishers.get(version.snap_start) is None:
            return self._settle(name, version.version)  # nothing slow to do: Active at once, as Lambda answers
        self._spawn(self._activate(name, version.version), f"activate-{name}:{version.version}")
        return version

    async def delete(self, name: str, qualifier: str | None) -> list[FunctionVersion]:
        """Delete a function or one version; returns the deleted versions (for snapshot cleanup)."""
        if qualifier is None:
            deleted = self.registry.delete_function(name)
            await self.retire(name, None)
            self.dropped(deleted)
            self._collect_garbage()
            return deleted
        if qualifier == LATEST:
            raise InvalidParameterValue("$LATEST version cannot be deleted without deleting the function.")
        if not qualifier.isdigit():
            raise InvalidParameterValue("Deletion of aliases is not currently supported.")
        self.registry.function_info(name)
        try:
            deleted_version = self.registry.delete_version(name, qualifier)
        except NotFound:
            return []
        await self.retire(name, qualifier)
        self.dropped([deleted_version])
        self._collect_garbage()
        return [deleted_version]

    # -- layers ----------------------------------------------------------------------------
    async def publish_layer_version(self, raw_name: str, body: Mapping[str, Any]) -> LayerVersion:
        """Validate, store the package (as code artifacts are) and record the next version."""
        name = layer_check.layer_name(raw_name, self.registry.arn_prefix)
        description, license_info, runtimes, architectures = layer_check.publish_fields(body)
        content = body.get("Content")
        if not isinstance(content, Mapping):
            raise check.constraint_error("null", "content", "Member must not be null")
        with self._ingesting() as ingested:
            artifact = await self._code(content, ingested)
            with self._dropping_on_failure(artifact):
                unzipped = await asyncio.to_thread(self.artifacts.unzipped_size, artifact.digest)
                return self.layers.publish(LayerVersion(
                    layer=name, version=0, digest=artifact.digest, sha256=artifact.sha256, size=artifact.size,
                    unzipped=unzipped, description=description, license_info=license_info,
                    compatible_runtimes=runtimes, compatible_architectures=architectures))

    def delete_layer_version(self, raw_name: str, raw_version: str) -> None:
        """Idempotent; the package stays while a function version uses it."""
        name = layer_check.layer_name(raw_name, self.registry.arn_prefix)
        self.layers.delete(name, layer_check.version_number(raw_version))
        self._collect_garbage()

    def collect_garbage(self) -> list[int]:
        """Delete code no version references, then reclaim the host id slices of deleted
        functions that have nothing left (returns those)."""
        self.artifacts.collect_garbage(self.registry.referenced_digests(), self.registry.referenced_trees())
        return self.registry.reclaim_slices(self.slice_in_use)

    # -- aliases ---------------------------------------------------------------------------
    @staticmethod
    def _routing(body: Mapping[str, Any], target: str) -> dict[str, float]:
        config = body.get("RoutingConfig") or {}
        weights = (config.get("AdditionalVersionWeights") or {}) if isinstance(config, Mapping) else {}
        if not isinstance(weights, Mapping):
            raise InvalidParameterValue("RoutingConfig.AdditionalVersionWeights must be a map")
        if len(weights) > 1:
            raise InvalidParameterValue("Number of items in AdditionalVersionWeights cannot be greater than 1")
        out: dict[str, float] = {}
        for version, weight in weights.items():
            if not str(version).isdigit():
                raise check.constraint_error(f"{{{version}={weight}}}", "routingConfig.additionalVersionWeights",
                                             "Map keys must satisfy constraint: [Member must satisfy regular expression pattern: [0-9]+]")
            if not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0:
                raise check.constraint_error(f"{{{version}={float(weight) if isinstance(weight, (int, float)) else weight}}}",
                                             "routingConfig.additionalVersionWeights",
                                             "Map value must satisfy constraint: [Member must have value less than or equal to 1.0, Member must have value greater than or equal to 0.0, Member must not be null]")
            if target == LATEST:
                raise InvalidParameterValue("$LATEST is not supported for an alias pointing to more than 1 version")
            if str(version) == target:
                raise InvalidParameterValue(
                    f"Invalid function version {target}. Function version {target} is already included in routing configuration."
                )
            out[str(version)] = float(weight)
        return out

    def create_alias(self, function: str, body: Mapping[str, Any]) -> Alias:
        name = check.alias_name(check.require(body, "Name", "name"))
        target = check.version_ref(check.require(body, "FunctionVersion", "functionVersion"))
        try:
            self.registry.function_info(function)
        except NotFound as exc:  # Lambda names the requested version of the missing function
            raise NotFound(f"Function not found: {self.registry.function_arn(function, target)}") from exc
        alias = Alias(function, name, target, check.description(body.get("Description", "")), new_revision(),
                      self._routing(body, target))
        return self.registry.create_alias(alias)

    def update_alias(self, function: str, name: str, body: Mapping[str, Any]) -> Alias:
        current = self.registry.get_alias(function, name)
        target = check.version_ref(body["FunctionVersion"]) if "FunctionVersion" in body else current.version
        description = check.description(body["Description"]) if "Description" in body else current.description
        routing = self._routing(body, target) if "RoutingConfig" in body else current.routing

        def change(a: Alias) -> None:
            a.version, a.description, a.routing = target, description, routing

        return self.registry.update_alias(function, name, change, body.get("RevisionId"))
