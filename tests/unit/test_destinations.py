"""Destination ARNs and invocation records (snapfaas.destinations)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from snapfaas import destinations as d
from snapfaas.errors import InvalidParameterValue

REGION, ACCOUNT = "us-east-1", "000000000000"


def test_function_and_file_destinations_of_this_server() -> None:
    assert d.parse(f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:sink", REGION, ACCOUNT) == \
        d.FunctionDestination(f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:sink", "sink", None)
    assert d.parse(f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:sink:live", REGION, ACCOUNT).qualifier == "live"
    target = d.parse(f"arn:aws:snapfaas:{REGION}:{ACCOUNT}:file/failures.v1", REGION, ACCOUNT)
    assert isinstance(target, d.FileDestination) and target.path(Path("/x")) == Path("/x/failures.v1.jsonl")
    # every form passes Lambda's published DestinationArn pattern
    assert d.DESTINATION_ARN_RE.fullmatch(target.arn)


@pytest.mark.parametrize("name", ["../evil", "a/b", ".hidden", "..", "", "x" * 129, "sp ace", "nul\x00"])
def test_file_names_cannot_leave_the_destinations_dir(name: str) -> None:
    with pytest.raises(InvalidParameterValue):
        d.parse(f"arn:aws:snapfaas:{REGION}:{ACCOUNT}:file/{name}", REGION, ACCOUNT)


@pytest.mark.parametrize("arn", [
    f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:sink",  # another region
    f"arn:aws:lambda:{REGION}:111111111111:function:sink",  # another account
    f"arn:aws:sqs:{REGION}:{ACCOUNT}:queue",  # unsupported service
    f"arn:aws:iam:{REGION}:{ACCOUNT}:function:f",
])
def test_other_destinations_are_refused(arn: str) -> None:
    with pytest.raises(InvalidParameterValue) as exc:
        d.parse(arn, REGION, ACCOUNT)
    assert arn in exc.value.message


def test_record_shape_with_and_without_a_run() -> None:
    ran = d.invocation_record(request_id="r", function_arn="arn:f:$LATEST", condition="RetriesExhausted",
                              invoke_count=3, request_payload=b'{"k": 1}', now=0.0, status=200,
                              executed_version="$LATEST", function_error="Unhandled", response=b'{"errorMessage": "x"}')
    assert ran == {
        "version": "1.0", "timestamp": "1970-01-01T00:00:00.000Z",
        "requestContext": {"requestId": "r", "functionArn": "arn:f:$LATEST", "condition": "RetriesExhausted",
                           "approximateInvokeCount": 3},
        "requestPayload": {"k": 1},
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "responsePayload": {"errorMessage": "x"},
    }
    never = d.invocation_record(request_id="r", function_arn="a", condition="EventAgeExceeded", invoke_count=0,
                                request_payload=b"", now=0.0)
    assert "responseContext" not in never and never["requestPayload"] is None


def test_fit_drops_payloads_to_stay_under_the_event_limit() -> None:
    record = d.invocation_record(request_id="r", function_arn="a", condition="Success", invoke_count=1,
                                 request_payload=b'"small"', now=0.0, status=200, executed_version="1",
                                 response=json.dumps("x" * 5000).encode())
    assert json.loads(d.fit(record, 10_000)) == record
    small = json.loads(d.fit(record, 1000))
    assert small["responsePayload"] is None and small["requestPayload"] == "small"
    assert small["requestContext"]["truncated"] is True


def test_append_line_refuses_a_symlinked_file(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    (tmp_path / "dest").mkdir()
    os.symlink(target, tmp_path / "dest" / "q.jsonl")
    with pytest.raises(OSError):
        d.append_line(tmp_path / "dest" / "q.jsonl", b"{}")
    d.append_line(tmp_path / "dest" / "ok.jsonl", b'{"a": 1}')
    d.append_line(tmp_path / "dest" / "ok.jsonl", b'{"a": 2}\n')
    assert (tmp_path / "dest" / "ok.jsonl").read_text() == '{"a": 1}\n{"a": 2}\n'
    assert target.read_text() == ""
