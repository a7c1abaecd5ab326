"""The shortest real path: create with boto3, invoke in a runc sandbox, read the result."""

from tests.conftest import create, invoke_json

APP = """
import os
def handler(event, context):
    return {"uid": os.getuid(), "event": event, "name": context.function_name}
"""


def test_create_and_invoke(lam) -> None:
    created = create(lam, "smoke", {"app.py": APP}, wait=False)
    assert created["State"] == "Pending"
    lam.get_waiter("function_active_v2").wait(FunctionName="smoke", WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})
    response, body = invoke_json(lam, "smoke", {"k": 1})
    assert response["StatusCode"] == 200
    assert "FunctionError" not in response
    assert body == {"uid": 1000, "event": {"k": 1}, "name": "smoke"}
