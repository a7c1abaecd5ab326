"""Functions, versions, aliases, code and reserved concurrency survive a clean restart (SIGTERM)
and a crash (SIGKILL); a crash leaves no containers behind once the server is back.

Uses its own server, so restarting it disturbs no other module.
"""

from __future__ import annotations

import signal
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ServerHandle, create, invoke_json, make_zip, require_root, run_server
from tests.e2e.test_control_plane import FAST, deploy, echo_code, sha256_b64, wait_updated, without_metadata

PACKAGES = {tag: make_zip(echo_code(tag)) for tag in ("v1", "v2", "v3")}


@pytest.fixture(scope="module")
def durable(processes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:  # type: ignore[no-untyped-def]
    require_root()
    yield from run_server(processes, tmp_path_factory.mktemp("durable"), ["--keep-alive", "60"])


@pytest.fixture(scope="module")
def populated(durable: ServerHandle) -> ServerHandle:
    """keep: versions 1 (v1) and 2 (v2), $LATEST at v3, aliases stable->1 and canary->2 (+10% of 1),
    reserved concurrency 5, an environment variable; plain: a second function with nothing extra."""
    lam = durable.client()
    deploy(lam, "keep", PACKAGES["v1"], Environment={"Variables": {"ENV_A": "kept"}}, MemorySize=192)
    lam.publish_version(FunctionName="keep")
    for tag in ("v2", "v3"):
        lam.update_function_code(FunctionName="keep", ZipFile=PACKAGES[tag])
        wait_updated(lam, "keep")
        if tag == "v2":
            lam.publish_version(FunctionName="keep", Description="second")
    lam.create_alias(FunctionName="keep", Name="stable", FunctionVersion="1")
    lam.create_alias(FunctionName="keep", Name="canary", FunctionVersion="2", Description="canary",
                     RoutingConfig={"AdditionalVersionWeights": {"1": 0.1}})
    lam.put_function_concurrency(FunctionName="keep", ReservedConcurrentExecutions=5)
    create(lam, "plain", echo_code("plain"))
    return durable


def snapshot(server: ServerHandle) -> dict[str, Any]:
    """Everything the control plane reports about the two functions."""
    lam = server.client()
    return {
        "functions": [without_metadata(f) for f in lam.list_functions(FunctionVersion="ALL")["Functions"]],
        "latest": without_metadata(lam.get_function_configuration(FunctionName="keep")),
        "versions": lam.list_versions_by_function(FunctionName="keep")["Versions"],
        "aliases": lam.list_aliases(FunctionName="keep")["Aliases"],
        "concurrency": without_metadata(lam.get_function_concurrency(FunctionName="keep")),
        "plain_concurrency": without_metadata(lam.get_function_concurrency(FunctionName="plain")),
    }


def assert_serving(server: ServerHandle) -> None:
    """Every qualifier runs the code it was given, with its configuration."""
    lam = server.client()
    expected = {None: "v3", "$LATEST": "v3", "1": "v1", "2": "v2", "stable": "v1"}
    for qualifier, tag in expected.items():
        response, body = invoke_json(lam, "keep", {"q": qualifier}, **({"Qualifier": qualifier} if qualifier else {}))
        assert "FunctionError" not in response, body
        assert (body["tag"], body["env"], body["memory"], body["event"]) == (tag, "kept", "192", {"q": qualifier})
    assert invoke_json(lam, "plain")[1]["tag"] == "plain"
    location = lam.get_function(FunctionName="keep", Qualifier="2")["Code"]["Location"]
    with urllib.request.urlopen(location, timeout=10) as download:
        assert download.read() == PACKAGES["v2"]


def test_state_is_as_built(populated: ServerHandle) -> None:
    state = snapshot(populated)
    assert [(v["Version"], v["CodeSha256"]) for v in state["versions"]] == [
        ("$LATEST", sha256_b64(PACKAGES["v3"])), ("1", sha256_b64(PACKAGES["v1"])), ("2", sha256_b64(PACKAGES["v2"]))]
    assert {a["Name"]: a["FunctionVersion"] for a in state["aliases"]} == {"canary": "2", "stable": "1"}
    assert state["concurrency"] == {"ReservedConcurrentExecutions": 5} and state["plain_concurrency"] == {}
    assert_serving(populated)


def test_everything_survives_sigterm_restart(populated: ServerHandle) -> None:
    before = snapshot(populated)
    assert_serving(populated)
    assert populated.runc_containers(), "expected warm environments before the restart"
    assert populated.stop(signal.SIGTERM) == 0
    assert populated.runc_containers() == [], "containers outlived a clean shutdown"
    populated.start()
    assert snapshot(populated) == before
    assert_serving(populated)


def test_everything_survives_sigkill_and_leftovers_are_reaped(populated: ServerHandle) -> None:
    before = snapshot(populated)
    assert_serving(populated)
    assert populated.runc_containers(), "expected warm environments before the crash"
    populated.restart(signal.SIGKILL)
    assert populated.runc_containers() == [], "containers left by the killed server were not reaped"
    after = snapshot(populated)
    assert after == before
    lam = populated.client()
    assert lam.get_function(FunctionName="keep")["Configuration"]["State"] == "Active"
    assert_serving(populated)


def test_changes_after_a_crash_persist_too(populated: ServerHandle) -> None:
    lam = populated.client()
    lam.update_function_configuration(FunctionName="keep", Description="after the crash")
    wait_updated(lam, "keep")
    lam.update_alias(FunctionName="keep", Name="stable", FunctionVersion="2")
    lam.delete_function_concurrency(FunctionName="keep")
    lam.delete_function(FunctionName="plain")
    before = snapshot_without_plain(populated)
    populated.restart(signal.SIGKILL)
    assert snapshot_without_plain(populated) == before
    lam = populated.client()
    assert lam.get_function_configuration(FunctionName="keep")["Description"] == "after the crash"
    assert "Concurrency" not in lam.get_function(FunctionName="keep")
    assert [f["FunctionName"] for f in lam.list_functions()["Functions"]] == ["keep"]
    response, body = invoke_json(lam, "keep", Qualifier="stable")
    assert (response["ExecutedVersion"], body["tag"]) == ("2", "v2")
    lam.get_waiter("function_active_v2").wait(FunctionName="keep", WaiterConfig=FAST)


def snapshot_without_plain(server: ServerHandle) -> dict[str, Any]:
    lam = server.client()
    return {
        "functions": [without_metadata(f) for f in lam.list_functions(FunctionVersion="ALL")["Functions"]],
        "versions": lam.list_versions_by_function(FunctionName="keep")["Versions"],
        "aliases": lam.list_aliases(FunctionName="keep")["Aliases"],
        "concurrency": without_metadata(lam.get_function_concurrency(FunctionName="keep")),
    }
