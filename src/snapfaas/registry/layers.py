"""Lambda layers: versioned, immutable packages a function mounts under /opt.

`LayerRegistry` keeps layer versions in the registry database (tables ``layers`` and
``layer_versions``, see registry/schema.py); the packages themselves are code artifacts
(registry/artifacts.py), shared by content with function code. Validation functions here are
pure and raise `snapfaas.errors` leaves with Lambda's wording (as recorded from AWS).

A layer version number is never reused: deleting version 2 and publishing again gives 3. A
function version keeps its layers by content (ARN, digest and sizes copied into its record),
so deleting a layer version does not break functions that use it, as on Lambda.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from snapfaas.errors import InvalidParameterValue, NotFound, ValidationError
from sqlalchemy import and_, delete, select, update

from snapfaas.registry.db import Registry, insert_missing
from snapfaas.registry.schema import layer_versions, layers
from snapfaas.registry.model import now_iso

MAX_FUNCTION_LAYERS = 5
ARCHITECTURES = ("x86_64", "arm64")
LAYER_VERSION_ARN_PATTERN = (
    r"(arn:(aws[a-zA-Z-]*)?:lambda:(eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:\d{12}:layer:"
    r"[a-zA-Z0-9-_]+:[0-9]+)|(arn:[a-zA-Z0-9-]+:lambda:::awslayer:[a-zA-Z0-9-_]+)"
)
LAYER_VERSION_ARN_RE = re.compile(LAYER_VERSION_ARN_PATTERN)
LAYER_NAME_PATTERN = r"(arn:[a-zA-Z0-9-]+:lambda:[a-zA-Z0-9-]+:\d{12}:layer:[a-zA-Z0-9-_]+)|[a-zA-Z0-9-_]+"
LAYER_NAME_RE = re.compile(LAYER_NAME_PATTERN)
# The runtimes PublishLayerVersion accepts, in the order Lambda's error message lists them.
LAYER_RUNTIMES = (
    "nodejs20.x", "python3.14", "provided.al2023", "python3.12", "python3.13", "nodejs24.x", "nodejs22.x", "java25",
    "python3.10", "python3.11", "java21", "ruby3.3", "ruby3.4", "ruby3.2", "python3.8", "python3.9", "java17",
    "nodejs16.x", "dotnet10", "dotnet8", "java11", "dotnet6", "nodejs18.x", "provided.al2", "java8.al2",
)
# The runtimes the list filters (CompatibleRuntime) accept: the API model's whole Runtime enum.
FILTER_RUNTIMES = (
    "ruby3.5", "ruby2.6", "dotnetcore1.0", "python3.7", "nodejs8.10", "nasa", "ruby2.7", "python2.7-greengrass",
    "dotnetcore2.0", "python3.8", "java21", "dotnet6", "dotnetcore2.1", "python3.9", "java11", "nodejs6.10",
    "provided", "dotnetcore3.1", "dotnet8", "java25", "java17", "nodejs", "nodejs4.3", "java8.al2", "go1.x",
    "dotnet10", "nodejs20.x", "go1.9", "byol", "nodejs10.x", "provided.al2023", "nodejs22.x", "python3.10", "java8",
    "nodejs12.x", "python3.11", "nodejs24.x", "nodejs8.x", "python3.12", "nodejs14.x", "nodejs8.9", "nodejs26.x",
    "python3.13", "python3.14", "nodejs16.x", "python3.15", "provided.al2", "nodejs4.3-edge", "nodejs18.x",
    "ruby3.2", "python3.4", "ruby3.3", "ruby3.4", "ruby2.5", "python3.6", "python2.7",
)
NOT_FOUND = "The resource you requested does not exist."


@dataclasses.dataclass
class LayerVersion:
    """One published layer version. `digest` names its package in the artifact store."""

    layer: str
    version: int
    digest: str
    sha256: str  # Lambda's CodeSha256 (base64)
    size: int  # zip bytes
    unzipped: int  # extracted bytes (counts against the function's 250 MB)
    description: str = ""
    license_info: str | None = None
    compatible_runtimes: list[str] = dataclasses.field(default_factory=list)
    compatible_architectures: list[str] = dataclasses.field(default_factory=list)
    created: str = dataclasses.field(default_factory=now_iso)

    def matches(self, runtime: str | None, architecture: str | None) -> bool:
        """Whether the list filters (CompatibleRuntime, CompatibleArchitecture) select it."""
        return (runtime is None or runtime in self.compatible_runtimes) and (
            architecture is None or architecture in self.compatible_architectures)


# -- validation (pure) -------------------------------------------------------------------------
def _joined(values: Sequence[object]) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def raise_collected(problems: list[str]) -> None:
    """Raise Lambda's "N validation error(s) detected: a; b" for the collected `problems`."""
    if problems:
        noun = "error" if len(problems) == 1 else "errors"
        raise ValidationError(f"{len(problems)} validation {noun} detected: " + "; ".join(problems))


def layer_name(raw: str, arn_prefix: str) -> str:
    """A LayerName path member (a name, or the layer's ARN in this region and account) -> name."""
    if not raw or len(raw) > 140 or not LAYER_NAME_RE.fullmatch(raw):
        raise_collected([f"Value '{raw}' at 'layerName' failed to satisfy constraint: Member must satisfy regular "
                         f"expression pattern: {LAYER_NAME_PATTERN}"])
    if raw.startswith("arn:"):
        prefix, _, name = raw.rpartition(":")
        if prefix + ":" != layer_arn_prefix(arn_prefix):
            raise NotFound(NOT_FOUND)
        return name
    return raw


def layer_arn_prefix(function_arn_prefix: str) -> str:
    """``arn:aws:lambda:<region>:<account>:layer:`` from the registry's function ARN prefix."""
    return function_arn_prefix.removesuffix("function:") + "layer:"


def version_number(raw: str) -> int:
    """A VersionNumber path member; Lambda answers below 1 with its own message."""
    try:
        number = int(raw)
    except ValueError as exc:
        raise ValidationError(f"1 validation error detected: Value '{raw}' at 'versionNumber' failed to satisfy "
                              "constraint: Member must be a number") from exc
    if number < 1:
        raise InvalidParameterValue("Layer Version Cannot be less than 1")
    return number


def publish_fields(body: Mapping[str, Any]) -> tuple[str, str | None, list[str], list[str]]:
    """(Description, LicenseInfo, CompatibleRuntimes, CompatibleArchitectures) of a
    PublishLayerVersion body, all problems reported at once as Lambda does."""
    problems: list[str] = []
    runtimes = body.get("CompatibleRuntimes") or []
    architectures = body.get("CompatibleArchitectures") or []
    if not isinstance(runtimes, list) or any(r not in LAYER_RUNTIMES for r in runtimes):
        problems.append(f"Value '{_joined(runtimes if isinstance(runtimes, list) else [runtimes])}' at "
                        f"'compatibleRuntimes' failed to satisfy constraint: Member must satisfy enum value set: "
                        f"{_joined(LAYER_RUNTIMES)}")
    elif len(runtimes) > 15:
        problems.append(f"Value '{_joined(runtimes)}' at 'compatibleRuntimes' failed to satisfy constraint: "
                        "Member must have length less than or equal to 15")
    if not isinstance(architectures, list) or any(a not in ARCHITECTURES for a in architectures):
        problems.append(f"Value '{_joined(architectures if isinstance(architectures, list) else [architectures])}' "
                        "at 'compatibleArchitectures' failed to satisfy constraint: Member must satisfy constraint: "
                        "[Member must satisfy enum value set: [x86_64, arm64], Member must not be null]")
    elif len(architectures) > 2:
        problems.append(f"Value '{_joined(architectures)}' at 'compatibleArchitectures' failed to satisfy "
                        "constraint: Member must have length less than or equal to 2")
    description = body.get("Description", "")
    if not isinstance(description, str) or len(description) > 256:
        problems.append(f"Value '{description}' at 'description' failed to satisfy constraint: Member must have "
                        "length less than or equal to 256")
    license_info = body.get("LicenseInfo")
    if license_info is not None and (not isinstance(license_info, str) or len(license_info) > 512):
        problems.append(f"Value '{license_info}' at 'licenseInfo' failed to satisfy constraint: Member must have "
                        "length less than or equal to 512")
    raise_collected(problems)
    return str(description), license_info, list(runtimes), list(architectures)


def list_filters(query: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The CompatibleRuntime / CompatibleArchitecture filters of ListLayers / ListLayerVersions."""
    runtime = query.get("CompatibleRuntime")
    architecture = query.get("CompatibleArchitecture")
    problems: list[str] = []
    if runtime is not None and runtime not in FILTER_RUNTIMES:
        problems.append(f"Value '{runtime}' at 'compatibleRuntime' failed to satisfy constraint: Member must satisfy "
                        f"enum value set: {_joined(FILTER_RUNTIMES)}")
    if architecture is not None and architecture not in ARCHITECTURES:
        problems.append(f"Value '{architecture}' at 'compatibleArchitecture' failed to satisfy constraint: Member "
                        "must satisfy enum value set: [x86_64, arm64]")
    raise_collected(problems)
    return runtime, architecture


def layer_version_arn(raw: object, member: str = "arn") -> str:
    """A layer version ARN (GetLayerVersionByArn's Arn)."""
    if not isinstance(raw, str) or not 1 <= len(raw) <= 140 or not LAYER_VERSION_ARN_RE.fullmatch(raw):
        raise_collected([f"Value '{raw}' at '{member}' failed to satisfy constraint: Member must satisfy regular "
                         f"expression pattern: {LAYER_VERSION_ARN_PATTERN}"])
    return str(raw)


def function_layer_arns(raw: object) -> list[str]:
    """A function's ``Layers`` member: at most 5 layer version ARNs, no layer twice."""
    if not isinstance(raw, list):
        raise InvalidParameterValue("Layers must be a list of layer version ARNs")
    if any(not isinstance(a, str) or not 1 <= len(a) <= 2048 or not LAYER_VERSION_ARN_RE.fullmatch(a) for a in raw):
        raise_collected([
            f"Value '{_joined(raw)}' at 'layers' failed to satisfy constraint: Member must satisfy constraint: "
            "[Member must have length less than or equal to 2048, Member must have length greater than or equal to 1, "
            f"Member must satisfy regular expression pattern: {LAYER_VERSION_ARN_PATTERN}, Member must not be null]"
        ])
    if len(raw) > MAX_FUNCTION_LAYERS:
        raise InvalidParameterValue(f"Cannot reference more than {MAX_FUNCTION_LAYERS} layers.")
    seen: dict[str, str] = {}
    for arn in raw:
        layer = arn.rpartition(":")[0]
        if layer in seen:
            raise InvalidParameterValue(
                "Two different versions of the same layer are not allowed to be referenced in the same function. "
                f"{seen[layer]} and {arn} are versions of the same layer.")
        seen[layer] = arn
    return list(raw)


# -- shapes --------------------------------------------------------------------------------------
def version_item(v: LayerVersion, arn_prefix: str) -> dict[str, Any]:
    """LayerVersionsListItem (ListLayerVersions, ListLayers' LatestMatchingVersion)."""
    out: dict[str, Any] = {
        "LayerVersionArn": f"{layer_arn_prefix(arn_prefix)}{v.layer}:{v.version}",
        "Version": v.version,
        "Description": v.description,
        "CreatedDate": v.created,
        "CompatibleRuntimes": list(v.compatible_runtimes),
        "CompatibleArchitectures": list(v.compatible_architectures),
    }
    if v.license_info is not None:
        out["LicenseInfo"] = v.license_info
    return out


def version_detail(v: LayerVersion, arn_prefix: str, location: str) -> dict[str, Any]:
    """PublishLayerVersion / GetLayerVersion(ByArn) response."""
    out = version_item(v, arn_prefix)
    out["LayerArn"] = f"{layer_arn_prefix(arn_prefix)}{v.layer}"
    out["Content"] = {"Location": location, "CodeSha256": v.sha256, "CodeSize": v.size}
    return out


# -- store ---------------------------------------------------------------------------------------
class LayerRegistry:
    """Layer versions over the registry database (stateless; every method is one statement or
    one transaction)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.arn_prefix = layer_arn_prefix(registry.arn_prefix)

    def arn(self, layer: str, version: int | None = None) -> str:
        return self.arn_prefix + layer + (f":{version}" if version is not None else "")

    def publish(self, draft: LayerVersion) -> LayerVersion:
        """Store `draft` as the layer's next version (numbers are never reused; two publishes at
        once, even on two nodes, are serialized by the counter row's lock)."""
        with self.registry.transaction() as db:
            insert_missing(db, layers, {"name": draft.layer, "last_version": 0})
            number = db.execute(select(layers.c.last_version).where(layers.c.name == draft.layer)
                                .with_for_update()).scalar_one() + 1
            db.execute(update(layers).where(layers.c.name == draft.layer).values(last_version=number))
            stored = dataclasses.replace(draft, version=number)
            db.execute(layer_versions.insert().values(layer=draft.layer, version=number,
                                                      data=json.dumps(dataclasses.asdict(stored))))
        return stored

    def get(self, layer: str, version: int) -> LayerVersion:
        rows = self.registry.rows(select(layer_versions.c.data).where(
            and_(layer_versions.c.layer == layer, layer_versions.c.version == version)))
        if not rows:
            raise NotFound(NOT_FOUND)
        return LayerVersion(**json.loads(rows[0][0]))

    def versions(self, layer: str) -> list[LayerVersion]:
        """Every version of `layer`, newest first."""
        rows = self.registry.rows(select(layer_versions.c.data).where(layer_versions.c.layer == layer)
                                  .order_by(layer_versions.c.version.desc()))
        return [LayerVersion(**json.loads(r[0])) for r in rows]

    def latest_matching(self, runtime: str | None, architecture: str | None) -> list[LayerVersion]:
        """Per layer (by name), its newest version the filters select."""
        rows = self.registry.rows(select(layer_versions.c.data)
                                  .order_by(layer_versions.c.layer, layer_versions.c.version.desc()))
        out: dict[str, LayerVersion] = {}
        for (data,) in rows:
            v = LayerVersion(**json.loads(data))
            if v.layer not in out and v.matches(runtime, architecture):
                out[v.layer] = v
        return list(out.values())

    def delete(self, layer: str, version: int) -> None:
        """Idempotent, as on Lambda (204 for a version that does not exist)."""
        with self.registry.transaction() as db:
            db.execute(delete(layer_versions).where(
                and_(layer_versions.c.layer == layer, layer_versions.c.version == version)))

    def for_function(self, arns: list[str]) -> list[dict[str, Any]]:
        """The function-record entries of validated layer version `arns` (in order): AWS's
        errors for layers in another region or that do not exist."""
        out: list[dict[str, Any]] = []
        region_prefix = self.arn_prefix.rsplit(":", 3)[0]  # arn:aws:lambda:<region>
        for arn in arns:
            head, _, number = arn.rpartition(":")
            if not arn.startswith(region_prefix + ":"):
                region = region_prefix.rsplit(":", 1)[1]
                raise InvalidParameterValue(
                    f"Layers are not in the same region as the function. Layers are expected to be in region {region}.")
            if not arn.startswith(self.arn_prefix):  # another account's layer: none is shared with us
                raise InvalidParameterValue(f"Layer version {arn} does not exist.")
            try:
                record = self.get(head[len(self.arn_prefix):], int(number))
            except NotFound as exc:
                raise InvalidParameterValue(f"Layer version {arn} does not exist.") from exc
            out.append({"arn": arn, "digest": record.digest, "size": record.size, "unzipped": record.unzipped})
        return out
