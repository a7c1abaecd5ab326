"""The file working set of a snapshot: recorded from its first restored environment, read ahead
at later restores (snapshot/workingset.py), and off with --no-restore-prefetch."""

from __future__ import annotations

import concurrent.futures
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ProcessFactory, ServerHandle, create, invoke_json, require_root, run_server
from tests.e2e.snapstart_support import SNAPSTART, assert_restored, publish, snapshot_dirs, wait_for

CODE = {"app.py": "import json, hashlib\nTABLE = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(1000)]\n"
                  "def handler(event, context):\n    return {'n': len(TABLE), 'pid': __import__('os').getpid()}\n"}


def working_set_file(server: ServerHandle, name: str) -> Path:
    [manifest], _ = snapshot_dirs(server, name, "1")
    return server.data_dir / "workingsets" / f"{manifest.name}.json"


def test_the_first_restore_records_the_host_files_it_touched_and_later_restores_use_them(server: ServerHandle, lam) -> None:  # type: ignore[no-untyped-def]
    create(lam, "wset", CODE, SnapStart=SNAPSTART)
    publish(lam, "wset")
    response, body = invoke_json(lam, "wset", {}, Qualifier="1", LogType="Tail")
    assert_restored(response["LogResult"])
    path = wait_for(lambda: working_set_file(server, "wset") if working_set_file(server, "wset").exists() else None,
                    30, "the working set to be recorded")
    data = json.loads(path.read_text())
    files = {entry["path"]: entry for entry in data["files"]}
    assert any("libpython" in p or "/python3" in p for p in files), sorted(files)
    assert any(p.endswith("/libc.so.6") for p in files), sorted(files)
    for entry in data["files"]:  # host files as they are on the host, never the sandbox's view or a tmpfs
        st = os.stat(entry["path"])
        assert (st.st_dev, st.st_ino) == (entry["dev"], entry["ino"]) and os.major(st.st_dev) != 0, entry["path"]
        assert entry["ranges"] and all(length > 0 for _, length in entry["ranges"])
    assert not any(p.startswith("/var/task") or p.startswith("/tmp") for p in files)
    # two more restores at once (the first environment is busy with one of them or warm): both read it ahead
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        outcomes = list(pool.map(lambda _: invoke_json(lam, "wset", {}, Qualifier="1"), range(3)))
    assert all("FunctionError" not in r and b["n"] == 1000 for r, b in outcomes), outcomes
    assert path.read_text() == json.dumps(data, separators=(",", ":")), "recorded once per snapshot"


@pytest.fixture(scope="module")
def no_prefetch(processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    require_root()
    yield from run_server(processes, tmp_path_factory.mktemp("noprefetch"), ["--keep-alive", "60", "--no-restore-prefetch"])


def test_no_restore_prefetch_records_nothing(no_prefetch: ServerHandle) -> None:
    lam = no_prefetch.client()
    create(lam, "plain", CODE, SnapStart=SNAPSTART)
    publish(lam, "plain")
    response, _ = invoke_json(lam, "plain", {}, Qualifier="1", LogType="Tail")
    assert_restored(response["LogResult"])
    second, _ = invoke_json(lam, "plain", {}, Qualifier="1")  # warm: the first invocation is long over
    assert "FunctionError" not in second
    assert list((no_prefetch.data_dir / "workingsets").glob("*.json")) == []
