"""Function tags through real boto3 and the real AWS CLI: Tags on create, TagResource /
UntagResource / ListTags with AWS's answers (as recorded), limits and errors."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import ROLE, ServerHandle, create, invoke_json, make_zip
from tests.e2e.test_control_auth import aws
from tests.e2e.test_layers import PREFIX, error_of

APP = {"app.py": "def handler(event, context):\n    return 'ok'\n"}


def test_tag_lifecycle(lam) -> None:  # type: ignore[no-untyped-def]
    create(lam, "tagged", APP, Tags={"key_a": "value_a"})
    arn = PREFIX + "function:tagged"
    assert lam.list_tags(Resource=arn)["Tags"] == {"key_a": "value_a"}
    before = lam.get_function(FunctionName="tagged")
    assert before["Tags"] == {"key_a": "value_a"}
    response = lam.tag_resource(Resource=arn, Tags={"key_b": "value_b", "key_c": "value_c"})
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 204
    after = lam.get_function(FunctionName="tagged")
    assert after["Tags"] == {"key_a": "value_a", "key_b": "value_b", "key_c": "value_c"}
    assert after["Configuration"]["RevisionId"] != before["Configuration"]["RevisionId"]  # as on AWS
    lam.tag_resource(Resource=arn, Tags={"key_c": "value_x"})
    assert lam.list_tags(Resource=arn)["Tags"]["key_c"] == "value_x"
    response = lam.untag_resource(Resource=arn, TagKeys=["key_c", "key_b", "never-set"])
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert lam.list_tags(Resource=arn)["Tags"] == {"key_a": "value_a"}
    lam.untag_resource(Resource=arn, TagKeys=["key_a"])
    assert lam.list_tags(Resource=arn)["Tags"] == {}
    assert "Tags" not in lam.get_function(FunctionName="tagged")


def test_tag_limits_and_errors_match_aws(lam) -> None:  # type: ignore[no-untyped-def]
    create(lam, "tag-limits", APP)
    arn = PREFIX + "function:tag-limits"
    assert lam.list_tags(Resource=arn)["Tags"] == {}
    assert error_of(lam.tag_resource, Resource=arn, Tags={f"{i}_key": f"{i}_value" for i in range(51)}) == (
        400, "InvalidParameterValueException", "Number of tags exceeds resource tag limit.")
    lam.tag_resource(Resource=arn, Tags={f"{i}_key": f"{i}_value" for i in range(50)})
    assert len(lam.get_function(FunctionName="tag-limits")["Tags"]) == 50
    assert error_of(lam.tag_resource, Resource=arn, Tags={"one_more": "x"})[2] == "Number of tags exceeds resource tag limit."
    code = {"ZipFile": make_zip(APP)}
    assert error_of(lam.create_function, FunctionName="too-many-tags", Runtime="python3.12", Role=ROLE, Handler="app.handler",
                    Code=code, Tags={f"{i}": "v" for i in range(51)}) == (
        400, "InvalidParameterValueException", "Number of tags exceeds resource tag limit.")
    assert error_of(lam.get_function, FunctionName="too-many-tags")[0] == 404
    assert error_of(lam.tag_resource, Resource=arn, Tags={}) == (
        400, "InvalidParameterValueException", "An error occurred and the request cannot be processed.")
    assert error_of(lam.tag_resource, Resource=arn, Tags={"aws:reserved": "x"})[:2] == (400, "InvalidParameterValueException")
    assert error_of(lam.tag_resource, Resource=arn, Tags={"k" * 129: "x"})[:2] == (400, "InvalidParameterValueException")
    assert error_of(lam.tag_resource, Resource=arn, Tags={"k": "v" * 257})[:2] == (400, "InvalidParameterValueException")
    missing = PREFIX + "function:doesnotexist"
    for call, extra in ((lam.tag_resource, {"Tags": {"a": "b"}}), (lam.untag_resource, {"TagKeys": ["a"]}),
                        (lam.list_tags, {})):
        assert error_of(call, Resource=missing, **extra) == (404, "ResourceNotFoundException", f"Function not found: {missing}")
    status, code_, message = error_of(lam.tag_resource, Resource="arn:aws:something", Tags={"a": "b"})
    assert (status, code_) == (400, "ValidationException")
    assert message.startswith("1 validation error detected: Value 'arn:aws:something' at 'resource' failed to satisfy "
                              "constraint: Member must satisfy regular expression pattern: arn:(aws[a-zA-Z-]*):lambda:")
    assert error_of(lam.untag_resource, Resource=arn, TagKeys=[]) == (
        400, "ValidationException", "1 validation error detected: Value null at 'tagKeys' failed to satisfy constraint: "
                                    "Member must not be null")


def test_tagging_versions_and_aliases_is_refused_as_on_aws(lam) -> None:  # type: ignore[no-untyped-def]
    create(lam, "tag-versions", APP)
    lam.publish_version(FunctionName="tag-versions")
    lam.create_alias(FunctionName="tag-versions", Name="live", FunctionVersion="1")
    message = "Tags on function aliases and versions are not supported. Please specify a function ARN."
    for qualifier in ("1", "$LATEST", "live"):
        assert error_of(lam.tag_resource, Resource=f"{PREFIX}function:tag-versions:{qualifier}", Tags={"a": "b"}) == (
            400, "InvalidParameterValueException", message)
    assert error_of(lam.list_tags, Resource=f"{PREFIX}function:tag-versions:1")[2] == message


def test_tags_through_the_aws_cli(server: ServerHandle, tmp_path: Path) -> None:
    (tmp_path / "fn.zip").write_bytes(make_zip(APP))
    aws(server, tmp_path, "create-function", "--function-name", "cli-tagged", "--runtime", "python3.12", "--role", ROLE,
        "--handler", "app.handler", "--zip-file", "fileb://fn.zip", "--tags", "team=core,env=test")
    arn = PREFIX + "function:cli-tagged"
    assert aws(server, tmp_path, "list-tags", "--resource", arn)["Tags"] == {"team": "core", "env": "test"}
    aws(server, tmp_path, "tag-resource", "--resource", arn, "--tags", "owner=me")
    aws(server, tmp_path, "untag-resource", "--resource", arn, "--tag-keys", "env", "team")
    assert aws(server, tmp_path, "list-tags", "--resource", arn)["Tags"] == {"owner": "me"}
    assert aws(server, tmp_path, "get-function", "--function-name", "cli-tagged")["Tags"] == {"owner": "me"}


INSIDER_APP = """
import boto3
from botocore.config import Config

ARN = "arn:aws:lambda:us-east-1:000000000000:function:tag-victim"
ATTEMPTS = {
    "tag": lambda c: c.tag_resource(Resource=ARN, Tags={"owned": "yes"}),
    "untag": lambda c: c.untag_resource(Resource=ARN, TagKeys=["team"]),
    "list_tags": lambda c: c.list_tags(Resource=ARN),
    "publish_layer": lambda c: c.publish_layer_version(LayerName="evil", Content={"ZipFile": b"x"}),
    "delete_layer": lambda c: c.delete_layer_version(LayerName="shared", VersionNumber=1),
    "list_layers": lambda c: c.list_layers(),
    "code_signing": lambda c: c.get_function_code_signing_config(FunctionName="tag-victim"),
}

def handler(event, context):
    client = boto3.client("lambda", config=Config(retries={"total_max_attempts": 1}))
    out = {}
    for name, attempt in ATTEMPTS.items():
        try:
            attempt(client)
            out[name] = "allowed"
        except client.exceptions.ClientError as exc:
            out[name] = [exc.response["Error"]["Code"], exc.response["Error"]["Message"]]
    return out
"""


def test_function_credentials_cannot_tag_or_publish_layers(lam) -> None:  # type: ignore[no-untyped-def]
    create(lam, "tag-victim", APP, Tags={"team": "core"})
    create(lam, "insider", {"app.py": INSIDER_APP}, Runtime="python3.11", Role="arn:aws:iam::000000000000:role/insider", Timeout=30)
    response, body = invoke_json(lam, "insider")
    assert "FunctionError" not in response, body
    resources = {"tag": PREFIX + "function:tag-victim", "untag": PREFIX + "function:tag-victim",
                 "list_tags": PREFIX + "function:tag-victim", "publish_layer": PREFIX + "layer:evil",
                 "delete_layer": PREFIX + "layer:shared:1", "list_layers": PREFIX + "function:*",
                 "code_signing": PREFIX + "function:tag-victim"}
    actions = {"tag": "TagResource", "untag": "UntagResource", "list_tags": "ListTags",
               "publish_layer": "PublishLayerVersion", "delete_layer": "DeleteLayerVersion", "list_layers": "ListLayers",
               "code_signing": "GetFunctionCodeSigningConfig"}
    for name, outcome in body.items():
        action = "lambda:" + actions[name]
        assert outcome == ["AccessDeniedException",
                           f"User: arn:aws:sts::000000000000:assumed-role/insider/insider is not authorized to perform: "
                           f"{action} on resource: {resources[name]} because no identity-based policy allows the "
                           f"{action} action"], (name, outcome)
    assert lam.list_tags(Resource=PREFIX + "function:tag-victim")["Tags"] == {"team": "core"}
    assert all(item["LayerName"] != "evil" for item in lam.list_layers()["Layers"])
