"""Worker behaviour that needs servers with their own flags: keep-alive reclamation, the global
environment limit, and clean shutdown with live environments.
"""

from __future__ import annotations

import concurrent.futures
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from snapfaas.config import bundles_for
from tests.conftest import ProcessFactory, ServerHandle, create, invoke_json, require_root, run_servers

SLEEPER = """
import threading, time, uuid
ENV_ID = uuid.uuid4().hex
def handler(event, context):
    event = event or {}
    if event.get("linger"):  # a non-daemon thread keeps the runtime alive after its channel closes
        threading.Thread(target=time.sleep, args=(600,)).start()
    time.sleep(event.get("sleep", 0))
    return {"env_id": ENV_ID}
"""
CGROUP_MEMORY = Path("/sys/fs/cgroup/memory/snapfaas")


SHARED_SERVERS = {
    "keepalive": ["--keep-alive", "2"],
    "twoenvs": ["--max-environments", "2", "--keep-alive", "60"],
    "queued": ["--max-environments", "2", "--keep-alive", "60", "--admission-wait", "120"],
}
DEDICATED_SERVERS = ("shutdown", "busyshutdown", "crashed", "durable")  # each stopped or killed by its own test


@pytest.fixture(scope="module")
def servers(processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerHandle]]:
    """Every server of the module, started (and stopped) together: the shared ones and one per
    test that stops its server itself (`dedicated_server`), each with its own data and sandbox dirs."""
    require_root()
    specs = {name: (tmp_path_factory.mktemp(name), args) for name, args in SHARED_SERVERS.items()}
    specs.update({name: (tmp_path_factory.mktemp(name), ["--keep-alive", "300"]) for name in DEDICATED_SERVERS})
    yield from run_servers(processes, specs)


@pytest.fixture(scope="module")
def short_keep_alive(servers: dict[str, ServerHandle]) -> ServerHandle:
    return servers["keepalive"]


@pytest.fixture(scope="module")
def two_envs(servers: dict[str, ServerHandle]) -> ServerHandle:
    return servers["twoenvs"]


def wait_until(predicate, deadline_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"{what} not reached within {deadline_s} s")


def test_idle_environments_are_reclaimed_after_keep_alive(short_keep_alive: ServerHandle) -> None:
    lam = short_keep_alive.client()
    create(lam, "ephemeral", {"app.py": SLEEPER})
    _, first = invoke_json(lam, "ephemeral")
    containers = short_keep_alive.runc_containers()
    assert len(containers) == 1
    assert len(cgroups_of(containers)) == 1, "test premise: the environment's cgroup is where we look"
    wait_until(lambda: short_keep_alive.runc_containers() == [], 20, "reclaiming the idle environment")
    wait_until(lambda: cgroups_of(containers) == [], 5, "removing the reclaimed environment's cgroup")
    _, second = invoke_json(lam, "ephemeral")
    assert second["env_id"] != first["env_id"]


def test_busy_environment_is_not_reclaimed(short_keep_alive: ServerHandle) -> None:
    """An invocation longer than keep-alive keeps its environment; it is reused right after."""
    lam = short_keep_alive.client()
    create(lam, "longrunner", {"app.py": SLEEPER}, Timeout=10)
    response, first = invoke_json(lam, "longrunner", {"sleep": 4})
    assert "FunctionError" not in response, first
    _, second = invoke_json(lam, "longrunner")
    assert second["env_id"] == first["env_id"]


def test_global_limit_throttles_the_third_concurrent_invoke(two_envs: ServerHandle) -> None:
    lam = two_envs.client()
    create(lam, "bounded", {"app.py": SLEEPER})
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(invoke_json, lam, "bounded", {"sleep": 2}) for _ in range(3)]
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result(timeout=60))
            except ClientError as exc:
                outcomes.append(exc)
    errors = [o for o in outcomes if isinstance(o, ClientError)]
    assert len(errors) == 1, outcomes
    response = errors[0].response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert response["Error"]["Code"] == "TooManyRequestsException"
    assert response["Reason"] == "ConcurrentInvocationLimitExceeded"
    assert len(two_envs.runc_containers()) <= 2


@pytest.fixture(scope="module")
def queued(servers: dict[str, ServerHandle]) -> ServerHandle:
    return servers["queued"]


def test_requests_beyond_the_limit_wait_for_a_slot_and_reuse_the_environments(queued: ServerHandle) -> None:
    """Six concurrent invokes, two slots, a long admission wait: all six are answered by the
    same two environments (no 429, no third container)."""
    lam = queued.client()
    create(lam, "queued", {"app.py": SLEEPER})
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(lambda _: invoke_json(lam, "queued", {"sleep": 0.5}), range(6)))
    assert all("FunctionError" not in response for response, _ in outcomes), outcomes
    assert len({body["env_id"] for _, body in outcomes}) <= 2
    assert len(queued.runc_containers()) <= 2


def test_full_pool_evicts_idle_environments_of_other_functions(two_envs: ServerHandle) -> None:
    """Two idle environments of `bounded` occupy the limit; another function still runs."""
    lam = two_envs.client()
    create(lam, "newcomer", {"app.py": SLEEPER})
    response, body = invoke_json(lam, "newcomer")
    assert "FunctionError" not in response, body
    assert len(two_envs.runc_containers()) <= 2


def dedicated_server(servers: dict[str, ServerHandle], name: str) -> ServerHandle:
    """A server (``--keep-alive 300``) this test alone uses and stops; the `servers` fixture
    deletes its dirs at the module's end."""
    return servers[name]


def assert_nothing_left(server: ServerHandle, containers: list[str]) -> None:
    assert server.runc_containers() == []
    assert cgroups_of(containers) == [], "environment cgroups survived"
    sandbox = Path(server.extra_args[server.extra_args.index("--sandbox-dir") + 1])
    assert list(bundles_for(sandbox).iterdir()) == [], "bundles survived shutdown"


def cgroups_of(containers: list[str]) -> list[Path]:
    """Memory cgroup directories still named after these containers' environments."""
    return [path for cid in containers for path in CGROUP_MEMORY.glob(f"**/{cid.removeprefix('sf-')}")]


def force_cleanup(server: ServerHandle) -> None:
    """After a failed shutdown: restart the server (which reaps what the old one left), stop it."""
    if server.proc is not None and server.proc.poll() is None:
        server.factory.stop(server.proc, signal.SIGKILL)
    if server.runc_containers():
        server.start()
        server.stop()


def warm_up(server: ServerHandle, name: str, count: int, linger: bool = False) -> None:
    lam = server.client()
    create(lam, name, {"app.py": SLEEPER}, Timeout=60)
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        for future in [pool.submit(invoke_json, lam, name, {"sleep": 1, "linger": linger}) for _ in range(count)]:
            future.result(timeout=60)
    assert len(server.runc_containers()) == count


def test_sigterm_with_warm_environments_leaves_nothing(servers: dict[str, ServerHandle]) -> None:
    server = dedicated_server(servers, "shutdown")
    try:
        warm_up(server, "lingering", 3)
        containers = server.runc_containers()
        assert server.factory.stop(server.proc, signal.SIGTERM, timeout=15) == 0  # type: ignore[arg-type]
        assert_nothing_left(server, containers)
        assert "stopped" in server.log_path.read_text()
    finally:
        force_cleanup(server)


def test_sigterm_during_an_invocation_is_prompt_and_leaves_nothing(servers: dict[str, ServerHandle]) -> None:
    server = dedicated_server(servers, "busyshutdown")
    try:
        warm_up(server, "busy", 2)
        lam = server.client()
        log = server.data_dir / "logs" / "busy.log"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            busy = pool.submit(invoke_json, lam, "busy", {"sleep": 50})
            wait_until(lambda: log.read_text().count("START RequestId") == 3, 20, "the busy invocation's start")
            containers = server.runc_containers()
            assert server.factory.stop(server.proc, signal.SIGTERM, timeout=10) == 0, "no clean exit within 10 s"  # type: ignore[arg-type]
            try:
                busy.result(timeout=30)
            except Exception:  # the connection may be cut; what the client sees is not the point here
                pass
        assert_nothing_left(server, containers)
    finally:
        force_cleanup(server)


def test_restart_after_sigkill_reaps_leftover_containers(servers: dict[str, ServerHandle]) -> None:
    server = dedicated_server(servers, "crashed")
    try:
        warm_up(server, "survivor", 2, linger=True)
        create(server.client(), "quitter", {"app.py": SLEEPER})
        invoke_json(server.client(), "quitter")  # its runtime exits when the daemon's pipes close
        containers = server.runc_containers()
        assert len(containers) == 3 and len(cgroups_of(containers)) == 3
        server.factory.stop(server.proc, signal.SIGKILL)  # type: ignore[arg-type]
        wait_until(lambda: len(server.runc_containers()) == 2, 10, "the quitter's container exiting on its own")
        server.start()
        assert server.runc_containers() == []
        assert cgroups_of(containers) == []
        assert "Removed 2 container(s) left by a previous run." in server.log_path.read_text()
        response, body = invoke_json(server.client(), "survivor")
        assert "FunctionError" not in response, body
        server.stop()
        assert_nothing_left(server, containers)
    finally:
        force_cleanup(server)


def test_accepted_event_survives_a_daemon_crash(servers: dict[str, ServerHandle]) -> None:
    """An Event accepted (202) but not yet run when the daemon dies runs after the restart."""
    server = dedicated_server(servers, "durable")
    try:
        lam = server.client()
        create(lam, "durable", {"app.py": SLEEPER + "\nprint('module loaded')\n"}, Timeout=30)
        lam.put_function_concurrency(FunctionName="durable", ReservedConcurrentExecutions=1)
        log = server.data_dir / "logs" / "durable.log"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            blocker = pool.submit(invoke_json, lam, "durable", {"sleep": 20})  # holds the only slot
            wait_until(lambda: log.exists() and "START RequestId" in log.read_text(), 20, "the blocking invocation's start")
            accepted = lam.invoke(FunctionName="durable", InvocationType="Event", Payload=b'{"marker": "replayed"}')
            assert accepted["StatusCode"] == 202
            server.factory.stop(server.proc, signal.SIGKILL)  # type: ignore[arg-type]  # before the first retry (1 s)
            with pytest.raises(Exception):  # the blocking call loses its connection
                blocker.result(timeout=30)
        request_id = accepted["ResponseMetadata"]["RequestId"]
        assert f"START RequestId: {request_id}" not in log.read_text(), "test premise: the event has not run yet"
        server.start()
        wait_until(lambda: f"END RequestId: {request_id}" in log.read_text(), 20, "the replayed event")
        server.stop()
    finally:
        force_cleanup(server)
