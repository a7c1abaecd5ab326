"""Function tags through real boto3 and the real AWS CLI: Tags on create, TagResource /
UntagResource / ListTags with AWS's answers (as recorded), limits and errors."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import ROLE, ServerHandle, create, make_zip
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
