"""Two real `snapfaas serve` processes on one PostgreSQL registry (``--registry``): boto3
create/publish/alias/invoke/delete on the first; the second sees the function, and the new
configuration after an UpdateFunctionConfiguration on the first, whose change notification it
receives (its log says so). During a PostgreSQL outage both answer 503 ServiceException at once
and keep serving; after the restart they answer again without being restarted.

(Code packages are still per node here: invokes run on the node that created the function.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from botocore.exceptions import ClientError

from tests.conftest import ServerHandle, create, invoke_json, require_root, run_servers, shared_store_args
from tests.e2e.test_control_plane import echo_code, wait_updated, without_metadata

DEADLINE_S = 120.0  # generous (shared machine); conditions are polled, nothing is timed


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def registry_url(postgres) -> str:  # type: ignore[no-untyped-def]
    return str(postgres.create_database("e2e_cluster_registry"))


@pytest.fixture(scope="module")
def node_args(tmp_path_factory: pytest.TempPathFactory, registry_url: str) -> list[str]:
    """What every node shares: the database, the store origin and the store secret."""
    return ["--keep-alive", "60", "--registry", registry_url, *shared_store_args(tmp_path_factory)]


@pytest.fixture(scope="module")
def nodes(processes, tmp_path_factory: pytest.TempPathFactory, node_args: list[str]) -> Iterator[dict[str, ServerHandle]]:  # type: ignore[no-untyped-def]
    """The two nodes, started (and stopped) together."""
    require_root()
    yield from run_servers(processes, {name: (tmp_path_factory.mktemp(name), node_args) for name in ("node_a", "node_b")})


@pytest.fixture(scope="module")
def first(nodes: dict[str, ServerHandle]) -> ServerHandle:
    return nodes["node_a"]


@pytest.fixture(scope="module")
def second(nodes: dict[str, ServerHandle]) -> ServerHandle:
    return nodes["node_b"]


def log_says(server: ServerHandle, text: str) -> bool:
    return text in server.log_path.read_text(errors="replace")


def test_two_nodes_share_functions_and_hear_each_others_changes(first: ServerHandle, second: ServerHandle) -> None:
    a, b = first.client(), second.client()
    wait_for(lambda: log_says(second, "registry change listener: listening"), "node b's change listener")
    create(a, "shared", echo_code("v1"), Environment={"Variables": {"KEY": "one"}})
    published = a.publish_version(FunctionName="shared")
    a.create_alias(FunctionName="shared", Name="live", FunctionVersion=published["Version"])
    response, body = invoke_json(a, "shared", {"x": 1}, Qualifier="live")
    assert "FunctionError" not in response and body["tag"] == "v1"  # type: ignore[index]

    seen = b.get_function_configuration(FunctionName="shared")
    assert without_metadata(seen) == without_metadata(a.get_function_configuration(FunctionName="shared"))
    assert [v["Version"] for v in b.list_versions_by_function(FunctionName="shared")["Versions"]] == ["$LATEST", "1"]
    assert b.get_alias(FunctionName="shared", Name="live")["FunctionVersion"] == "1"
    assert "shared" in [f["FunctionName"] for f in b.list_functions()["Functions"]]

    a.update_function_configuration(FunctionName="shared", Environment={"Variables": {"KEY": "two"}})
    wait_updated(a, "shared")
    wait_for(lambda: log_says(second, "function shared changed on another node"), "node b's notification")
    updated = b.get_function_configuration(FunctionName="shared")
    assert updated["Environment"] == {"Variables": {"KEY": "two"}}
    assert updated["RevisionId"] == a.get_function_configuration(FunctionName="shared")["RevisionId"]
    # a change made on b reaches a as well, and is visible there
    b.put_function_concurrency(FunctionName="shared", ReservedConcurrentExecutions=3)
    wait_for(lambda: log_says(first, "function shared changed on another node"), "node a's notification")
    assert a.get_function_concurrency(FunctionName="shared")["ReservedConcurrentExecutions"] == 3

    a.delete_function(FunctionName="shared")
    with pytest.raises(ClientError) as info:
        b.get_function(FunctionName="shared")
    assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_a_database_outage_answers_503_and_recovers(first: ServerHandle, second: ServerHandle, postgres) -> None:  # type: ignore[no-untyped-def]
    a, b = first.client(), second.client()
    create(a, "steady", echo_code("v1"))
    postgres.stop("fast")
    try:
        for client in (a, b) * 10:
            with pytest.raises(ClientError) as info:
                client.get_function(FunctionName="steady")
            error = info.value.response
            assert error["Error"]["Code"] == "ServiceException"
            assert error["ResponseMetadata"]["HTTPStatusCode"] == 503
            assert "the database is unavailable" in error["Error"]["Message"]
        assert first.proc is not None and first.proc.poll() is None  # still serving
    finally:
        postgres.start()

    def answers(client) -> bool:  # type: ignore[no-untyped-def]
        try:
            return client.get_function(FunctionName="steady")["Configuration"]["FunctionName"] == "steady"
        except ClientError as exc:
            if exc.response["ResponseMetadata"]["HTTPStatusCode"] != 503:
                raise
            return False

    wait_for(lambda: answers(a) and answers(b), "both nodes to answer after the restart")
    response, body = invoke_json(a, "steady")
    assert "FunctionError" not in response and body["tag"] == "v1"  # type: ignore[index]
    wait_for(lambda: log_says(second, "listening again"), "node b's listener to reconnect")
