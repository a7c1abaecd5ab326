"""Operator-only SnapStart operations: ``snapfaas snapstart verify`` and ``snapfaas snapshot expire``.

Both are reached only through operator-only API routes (`snapfaas.api.access.OPERATOR_ONLY`):
no function principal can call them, whatever its grants.

`verify(name, qualifier, copies, payload)`:
  1. resolve ``NAME:VERSION`` (or an alias) to a published SnapStart version that is invocable
     (an Inactive one answers SnapStartNotReadyException and is re-created, as an invoke would);
  2. two on-demand inits of that version (the references), then `copies` fresh environments
     restored from its snapshot, one after another; each is invoked once with `payload`, asked
     for its fingerprints (`snapfaas.runtime.inspection`), and destroyed: none is ever pooled,
     so no invoke reaches them;
  3. `snapfaas.snapshot.uniqueness.compare` decides what the restored copies share that they
     should not.

`expire(name, qualifier)`: the version's snapshot is dropped and the version goes Inactive now,
as after the retention period; its warm environments are retired, so the next invoke answers
SnapStartNotReadyException and re-creates the snapshot.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from typing import Any

from snapfaas.errors import InvalidParameterValue
from snapfaas.registry.model import FunctionVersion
from snapfaas.snapshot import uniqueness
from snapfaas.snapshot.manager import SnapshotManager
from snapfaas.worker.environment import InvokeRequest
from snapfaas.worker.invoker import Invoker, check_json
from snapfaas.worker.pool import Sample

REFERENCES = 2  # independent on-demand inits: what differs between them is not meant to be shared
MIN_COPIES, MAX_COPIES = 2, 16


@dataclasses.dataclass
class VerifyReport:
    function: str
    version: str
    copies: int
    reseed_after_restore: bool
    checked: int  # fingerprints compared
    findings: list[uniqueness.Finding]
    problems: list[str]  # copies or references that could not be inspected

    def to_json(self) -> dict[str, Any]:
        return {
            "FunctionName": self.function, "Version": self.version, "Copies": self.copies, "References": REFERENCES,
            "ReseedAfterRestore": self.reseed_after_restore, "Checked": self.checked,
            "Findings": [f.to_json() for f in self.findings], "Problems": self.problems,
        }


class SnapStartOperations:
    def __init__(self, invoker: Invoker, snapshots: SnapshotManager) -> None:
        self.invoker = invoker
        self.snapshots = snapshots

    def _version(self, name: str, qualifier: str | None, operation: str) -> FunctionVersion:
        if qualifier is None or qualifier == "$LATEST":
            raise InvalidParameterValue(f"{operation} needs a published version or an alias (NAME:VERSION): "
                                        "SnapStart applies to published versions only.")
        version, _ = self.invoker.resolve(name, qualifier)
        if not version.uses_snapshot:
            raise InvalidParameterValue(f"Version {version.version} of {name} does not use SnapStart "
                                        "(SnapStart.ApplyOn is not PublishedVersions).")
        return version

    def publish_progress(self, name: str, qualifier: str | None) -> dict[str, Any]:
        """Where the version's SnapStart publish is (`snapshot.progress`), with the version's
        state: a publish this server did not run (or ran over an hour ago) has ``Phase`` None."""
        version = self._version(name, qualifier, "publish progress")
        progress = self.snapshots.progress.get(version.name, version.version)
        out: dict[str, Any] = {"FunctionName": version.name, "Version": version.version, "Phase": None, "Phases": []}
        if progress is not None:
            out.update(progress.to_json(self.snapshots.progress.clock()))
        out.update(State=version.state.value, StateReason=version.state_reason, StateReasonCode=version.state_reason_code)
        return out

    async def verify(self, name: str, qualifier: str | None, copies: int, payload: bytes) -> VerifyReport:
        if isinstance(copies, bool) or not isinstance(copies, int) or not MIN_COPIES <= copies <= MAX_COPIES:
            raise InvalidParameterValue(f"Copies must be an integer from {MIN_COPIES} to {MAX_COPIES}.")
        check_json(payload)
        version = self._version(name, qualifier, "verify")
        self.invoker.check_ready(version)
        arn = self.invoker.registry.function_arn(name, version.version)
        worker = self.invoker.worker

        def request() -> InvokeRequest:
            return InvokeRequest(str(uuid.uuid4()), payload, arn, float(version.timeout))

        references = [await worker.sample(version, request(), restored=False) for _ in range(REFERENCES)]
        restored = [await worker.sample(version, request(), restored=True) for _ in range(copies)]
        problems = [f"{what} {i + 1}: {s.problem}" for what, group in (("reference init", references), ("restored copy", restored))
                    for i, s in enumerate(group) if s.problem is not None]
        restored_prints = [_with_response(s) for s in restored if s.fingerprints is not None]
        reference_prints = [_with_response(s) for s in references if s.fingerprints is not None]
        if len(restored_prints) >= 2:
            findings = uniqueness.compare(restored_prints, reference_prints)
        else:
            findings = []
            problems.append(f"only {len(restored_prints)} restored copies could be inspected: nothing compared")
        return VerifyReport(name, version.version, copies, worker.reseed_after_restore,
                            len(restored_prints[0]) if restored_prints else 0, findings, problems)

    async def expire(self, name: str, qualifier: str | None) -> FunctionVersion:
        version = self._version(name, qualifier, "expire")
        expired = self.snapshots.force_expire(version)
        await self.invoker.worker.retire(name, version.version)
        return expired


def _with_response(sample: Sample) -> dict[str, Any]:
    """A sample's fingerprints plus the handler's response (a value: see `uniqueness`)."""
    response = hashlib.sha256(sample.outcome.payload).hexdigest()[:24]
    return {**(sample.fingerprints or {}), "response": {"kind": "response", "category": "value", "digest": response}}
