"""AWS's SnapStart restrictions at CreateFunction, UpdateFunctionConfiguration and PublishVersion
(snapfaas.registry.service with a real registry and artifact store)."""

from __future__ import annotations

import asyncio

import pytest

from snapfaas.errors import InvalidParameterValue
from snapfaas.registry.model import LATEST, State
from snapfaas.registry.service import ControlPlane
from tests.unit.test_ingest_thread import body, control  # noqa: F401 (fixture)

SNAPSTART = {"ApplyOn": "PublishedVersions"}
MESSAGE = "python3.11 is not supported for SnapStart enabled functions."


def test_create_with_snapstart_on_a_runtime_off_the_list_stores_nothing(control: ControlPlane) -> None:  # noqa: F811
    async def scenario() -> None:
        with pytest.raises(InvalidParameterValue) as refused:
            await control.create_function({**body(), "SnapStart": SNAPSTART})
        assert refused.value.message == MESSAGE
        await control.close()

    asyncio.run(scenario())
    assert control.registry.list_latest() == []


def test_update_and_publish_check_the_list_the_server_has_now(control: ControlPlane) -> None:  # noqa: F811
    control.snapstart_runtimes = ("python3.11", "python3.12")  # --snapstart-runtimes widened

    async def scenario() -> None:
        await control.create_function({**body(), "SnapStart": SNAPSTART})
        control.registry.set_state("f", LATEST, State.ACTIVE, None, None)
        with pytest.raises(InvalidParameterValue, match="greater than 512 MB is not supported for SnapStart"):
            control.update_configuration("f", {"EphemeralStorage": {"Size": 1024}})
        control.snapstart_runtimes = ("python3.12", "python3.13", "python3.14")  # restarted with AWS's list
        with pytest.raises(InvalidParameterValue) as refused:
            control.publish_version("f", {})
        assert refused.value.message == MESSAGE
        assert [v.version for v in control.registry.list_versions("f")] == [LATEST]
        with pytest.raises(InvalidParameterValue) as refused:
            control.update_configuration("f", {"Description": "still SnapStart"})
        assert refused.value.message == MESSAGE
        control.update_configuration("f", {"SnapStart": {"ApplyOn": "None"}})  # turning it off is allowed
        await control.close()

    asyncio.run(scenario())
