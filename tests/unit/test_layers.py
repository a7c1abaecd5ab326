"""Layer versions and function tags over the SQLite registry, and their pure validation
(snapfaas.registry.layers, snapfaas.registry.tags), with Lambda's recorded wording."""

from __future__ import annotations


import pytest

from snapfaas.errors import InvalidParameterValue, NotFound, ValidationError
from snapfaas.registry import layers as check
from snapfaas.registry import tags as tag_check
from snapfaas.registry import validation
from snapfaas.registry.db import Registry
from snapfaas.registry.layers import LayerRegistry, LayerVersion
from snapfaas.registry.model import LATEST, FunctionVersion
from snapfaas.registry.tags import FunctionTags

FUNCTIONS = "arn:aws:lambda:us-east-1:000000000000:function:"
LAYERS = "arn:aws:lambda:us-east-1:000000000000:layer:"


def layer(name: str = "dep", digest: str = "d1", **kw: object) -> LayerVersion:
    return LayerVersion(layer=name, version=0, digest=digest, sha256="sha", size=10, unzipped=20, **kw)  # type: ignore[arg-type]


def function(name: str = "f", **kw: object) -> FunctionVersion:
    return FunctionVersion(name=name, version=LATEST, runtime="python3.12", handler="app.handler",
                           role="arn:aws:iam::000000000000:role/r", code_digest="code", code_sha256="s", code_size=1,
                           **kw)  # type: ignore[arg-type]


# -- layer versions --------------------------------------------------------------------------
def test_versions_are_numbered_per_layer_and_never_reused(reg: Registry) -> None:
    layers = LayerRegistry(reg)
    assert [layers.publish(layer()).version for _ in range(2)] == [1, 2]
    assert layers.publish(layer("other")).version == 1
    layers.delete("dep", 2)
    layers.delete("dep", 2)  # idempotent
    assert layers.publish(layer()).version == 3
    assert [v.version for v in layers.versions("dep")] == [3, 1]
    assert layers.get("dep", 1).digest == "d1"
    with pytest.raises(NotFound, match="The resource you requested does not exist."):
        layers.get("dep", 2)


def test_latest_matching_applies_the_filters(reg: Registry) -> None:
    layers = LayerRegistry(reg)
    layers.publish(layer(compatible_runtimes=["python3.12"], compatible_architectures=["x86_64"]))
    layers.publish(layer(compatible_runtimes=["python3.13"], compatible_architectures=["arm64"]))
    assert [(v.layer, v.version) for v in layers.latest_matching(None, None)] == [("dep", 2)]
    assert [(v.layer, v.version) for v in layers.latest_matching("python3.12", None)] == [("dep", 1)]
    assert [(v.layer, v.version) for v in layers.latest_matching(None, "arm64")] == [("dep", 2)]
    assert layers.latest_matching("python3.11", None) == []


def test_function_layers_are_resolved_with_aws_errors(reg: Registry) -> None:
    layers = LayerRegistry(reg)
    layers.publish(layer(digest="abc"))
    assert layers.for_function([LAYERS + "dep:1"]) == [{"arn": LAYERS + "dep:1", "digest": "abc", "size": 10, "unzipped": 20}]
    with pytest.raises(InvalidParameterValue, match=f"^Layer version {LAYERS}dep:2 does not exist.$"):
        layers.for_function([LAYERS + "dep:2"])
    with pytest.raises(InvalidParameterValue, match="^Layer version arn:aws:lambda:us-east-1:111111111111:layer:dep:1 does not exist.$"):
        layers.for_function(["arn:aws:lambda:us-east-1:111111111111:layer:dep:1"])
    with pytest.raises(InvalidParameterValue, match="Layers are expected to be in region us-east-1.$"):
        layers.for_function(["arn:aws:lambda:eu-west-1:000000000000:layer:dep:1"])


def test_referenced_digests_keep_packages_of_deleted_layer_versions_in_use(reg: Registry) -> None:
    layers = LayerRegistry(reg)
    layers.publish(layer(digest="used"))
    layers.publish(layer(digest="unused"))
    reg.create_function(function(layers=[{"arn": LAYERS + "dep:1", "digest": "used", "size": 1, "unzipped": 1}]))
    assert {"code", "used", "unused"} <= reg.referenced_digests()
    layers.delete("dep", 1)
    layers.delete("dep", 2)
    assert reg.referenced_digests() == {"code", "used"}
    opt = reg.get_version("f", LATEST).opt_tree
    assert opt is not None and opt.startswith("opt-")
    assert reg.referenced_trees() == {(0, "code"), (0, "used"), (0, opt)}


def test_opt_tree_is_named_by_ordered_layer_contents() -> None:
    a = {"arn": LAYERS + "a:1", "digest": "da", "size": 1, "unzipped": 1}
    b = {"arn": LAYERS + "b:1", "digest": "db", "size": 1, "unzipped": 1}
    assert function().opt_tree is None
    assert function(layers=[a, b]).opt_tree == function(name="g", layers=[dict(a, arn="x"), b]).opt_tree
    assert function(layers=[a, b]).opt_tree != function(layers=[b, a]).opt_tree


# -- validation ------------------------------------------------------------------------------
def test_function_layer_arns() -> None:
    assert check.function_layer_arns([LAYERS + "a:1", LAYERS + "b:3"]) == [LAYERS + "a:1", LAYERS + "b:3"]
    with pytest.raises(InvalidParameterValue, match="^Cannot reference more than 5 layers.$"):
        check.function_layer_arns([LAYERS + f"l{i}:1" for i in range(6)])
    with pytest.raises(InvalidParameterValue, match="^Two different versions of the same layer are not allowed"):
        check.function_layer_arns([LAYERS + "a:1", LAYERS + "a:1"])
    with pytest.raises(ValidationError) as info:
        check.function_layer_arns([LAYERS + "a"])
    assert info.value.message.startswith(f"1 validation error detected: Value '[{LAYERS}a]' at 'layers' failed to satisfy "
                                         "constraint: Member must satisfy constraint: [Member must have length less than or equal to 2048, ")


def test_publish_fields_report_every_problem_at_once() -> None:
    assert check.publish_fields({}) == ("", None, [], [])
    assert check.publish_fields({"Description": "d", "LicenseInfo": "MIT", "CompatibleRuntimes": ["python3.12"],
                                 "CompatibleArchitectures": ["arm64", "x86_64"]}) == ("d", "MIT", ["python3.12"], ["arm64", "x86_64"])
    with pytest.raises(ValidationError) as info:
        check.publish_fields({"CompatibleRuntimes": ["invalidruntime", "nodejs20.x"], "CompatibleArchitectures": ["invalidarch"]})
    assert info.value.message == (
        "2 validation errors detected: Value '[invalidruntime, nodejs20.x]' at 'compatibleRuntimes' failed to satisfy "
        "constraint: Member must satisfy enum value set: [nodejs20.x, python3.14, provided.al2023, python3.12, python3.13, "
        "nodejs24.x, nodejs22.x, java25, python3.10, python3.11, java21, ruby3.3, ruby3.4, ruby3.2, python3.8, python3.9, "
        "java17, nodejs16.x, dotnet10, dotnet8, java11, dotnet6, nodejs18.x, provided.al2, java8.al2]; Value "
        "'[invalidarch]' at 'compatibleArchitectures' failed to satisfy constraint: Member must satisfy constraint: "
        "[Member must satisfy enum value set: [x86_64, arm64], Member must not be null]")


def test_version_numbers_and_names() -> None:
    assert check.version_number("7") == 7
    for bad in ("0", "-1"):
        with pytest.raises(InvalidParameterValue, match="^Layer Version Cannot be less than 1$"):
            check.version_number(bad)
    assert check.layer_name("dep", FUNCTIONS) == "dep"
    assert check.layer_name(LAYERS + "dep", FUNCTIONS) == "dep"
    with pytest.raises(NotFound):
        check.layer_name("arn:aws:lambda:us-east-1:111111111111:layer:dep", FUNCTIONS)
    with pytest.raises(ValidationError):
        check.layer_name("bad name", FUNCTIONS)
    assert check.list_filters({"CompatibleRuntime": "python3.7"}) == ("python3.7", None)
    with pytest.raises(ValidationError, match="at 'compatibleArchitecture'"):
        check.list_filters({"CompatibleArchitecture": "x"})


def test_architectures() -> None:
    assert validation.architectures(["arm64"]) == ["arm64"]
    assert validation.architectures(["x86_64"]) == ["x86_64"]
    for bad in (["x86_64", "arm64"], [], "arm64"):
        with pytest.raises(ValidationError, match="Member must have length less than or equal to 1"):
            validation.architectures(bad)
    with pytest.raises(ValidationError, match="Member must satisfy enum value set: \\[x86_64, arm64\\]"):
        validation.architectures(["sparc"])


# -- tags ------------------------------------------------------------------------------------
def test_tags_change_and_mint_revisions(reg: Registry) -> None:
    reg.create_function(function(), {"a": "1"})
    tags = FunctionTags(reg)
    assert tags.get("f") == {"a": "1"}
    before = reg.get_version("f", LATEST).revision_id
    assert tags.tag("f", {"b": "2", "a": "x"}) == {"a": "x", "b": "2"}
    assert reg.get_version("f", LATEST).revision_id != before
    assert tags.untag("f", ["a", "never"]) == {"b": "2"}
    with pytest.raises(InvalidParameterValue, match="^Number of tags exceeds resource tag limit.$"):
        tags.tag("f", {str(i): "v" for i in range(50)})
    assert tags.get("f") == {"b": "2"}  # refused: nothing changed
    with pytest.raises(InvalidParameterValue, match="^An error occurred and the request cannot be processed.$"):
        tags.tag("f", {})
    reg.delete_function("f")
    with pytest.raises(NotFound, match=f"^Function not found: {FUNCTIONS}f$"):
        tags.get("f")
    reg.create_function(function())
    assert tags.get("f") == {}  # the deleted function's tags went with it


@pytest.mark.parametrize("bad", [{"aws:x": "v"}, {"AWS:x": "v"}, {"": "v"}, {"k" * 129: "v"}, {"k": "v" * 257}, {"k": 1}])
def test_tag_pairs_are_refused(bad: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidParameterValue):
        tag_check.create_tags(bad)


def test_tag_resource_arns() -> None:
    assert tag_check.function_of(FUNCTIONS + "f", FUNCTIONS) == "f"
    for qualified in (FUNCTIONS + "f:1", FUNCTIONS + "f:$LATEST", FUNCTIONS + "f:live"):
        with pytest.raises(InvalidParameterValue, match="^Tags on function aliases and versions are not supported."):
            tag_check.function_of(qualified, FUNCTIONS)
    with pytest.raises(NotFound, match="^Function not found: arn:aws:lambda:us-east-1:111111111111:function:f$"):
        tag_check.function_of("arn:aws:lambda:us-east-1:111111111111:function:f", FUNCTIONS)
    with pytest.raises(NotFound, match="^Event source mapping not found: "):
        tag_check.function_of("arn:aws:lambda:us-east-1:000000000000:event-source-mapping:"
                              "12345678-1234-1234-1234-123456789012", FUNCTIONS)
    with pytest.raises(ValidationError, match="^1 validation error detected: Value 'arn:aws:something' at 'resource'"):
        tag_check.function_of("arn:aws:something", FUNCTIONS)
