"""The scanner's claim checked on the real platform (real runc + CRIU): code it flags really does
return duplicated values across environments restored from one snapshot, and the same code with
the state re-created by an after-restore hook (which the scanner suppresses) does not."""

from __future__ import annotations

import base64
import concurrent.futures
import time

from snapfaas.scan import scan_zip
from tests.conftest import create, invoke_json, make_zip

UNSAFE_APP = '''import time
import uuid

INSTANCE_ID = str(uuid.uuid4())


def handler(event, context):
    time.sleep(1.5)
    return {"instance": INSTANCE_ID, "invoke": str(uuid.uuid4())}
'''

SAFE_APP = '''import time
import uuid

import snapshot_restore_py

INSTANCE_ID = str(uuid.uuid4())


@snapshot_restore_py.register_after_restore
def new_instance_id():
    global INSTANCE_ID
    INSTANCE_ID = str(uuid.uuid4())


def handler(event, context):
    time.sleep(1.5)
    return {"instance": INSTANCE_ID, "invoke": str(uuid.uuid4())}
'''


def publish_and_invoke_concurrently(lam, name: str, app: str) -> list[dict]:  # type: ignore[no-untyped-def]
    """Create a SnapStart function, publish it, and invoke the version from 2 threads at once."""
    create(lam, name, {"app.py": app}, SnapStart={"ApplyOn": "PublishedVersions"}, Timeout=15)
    version = lam.publish_version(FunctionName=name)["Version"]
    lam.get_waiter("published_version_active").wait(FunctionName=name, Qualifier=version,
                                                    WaiterConfig={"Delay": 0.1, "MaxAttempts": 1800})
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: invoke_json(lam, name, {}, Qualifier=version, LogType="Tail"), range(2)))
    elapsed = time.monotonic() - started
    # each invoke sleeps 1.5 s: finishing both in under 3 s means two environments served them
    assert elapsed < 3.0, f"the invokes did not overlap ({elapsed:.2f} s)"
    bodies = []
    for response, body in results:
        assert "FunctionError" not in response, body
        assert response["ExecutedVersion"] == version
        tail = base64.b64decode(response["LogResult"]).decode()
        assert "Restore Duration" in tail, f"not served by a restored environment:\n{tail}"
        bodies.append(body)
    return bodies


def test_flagged_uuid_is_duplicated_across_restored_environments(lam) -> None:  # type: ignore[no-untyped-def]
    result = scan_zip(make_zip({"app.py": UNSAFE_APP}))
    assert [(f.path, f.line, f.rule, f.code) for f in result.findings] == [
        ("app.py", 4, "SNAP001", "INSTANCE_ID = str(uuid.uuid4())")]

    first, second = publish_and_invoke_concurrently(lam, "scan-unsafe", UNSAFE_APP)
    assert first["invoke"] != second["invoke"]  # two invokes, fresh values in the handler
    assert first["instance"] == second["instance"], "the UUID generated at init is shared by every restore"


def test_state_recreated_by_a_hook_is_suppressed_and_really_unique(lam) -> None:  # type: ignore[no-untyped-def]
    result = scan_zip(make_zip({"app.py": SAFE_APP}))
    assert result.findings == []
    assert [(f.line, f.rule) for f in result.suppressed] == [(6, "SNAP001")]

    first, second = publish_and_invoke_concurrently(lam, "scan-safe", SAFE_APP)
    assert first["instance"] != second["instance"]
