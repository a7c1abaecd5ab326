"""Layers and architectures through the control plane (snapfaas.registry.service) with a real
artifact store and registry: Lambda's code-plus-layers size limit, packages kept while a
function version uses them, Architectures stored and changed by UpdateFunctionCode."""

from __future__ import annotations

import asyncio
import base64
import sys
from pathlib import Path

import pytest

from snapfaas.config import Limits
from snapfaas.errors import InvalidParameterValue
from snapfaas.registry.artifacts import ArtifactStore
from snapfaas.registry.db import Registry
from snapfaas.registry.model import LATEST, State
from snapfaas.registry.service import ControlPlane
from snapfaas.sandbox.interpreter import InterpreterRegistry
from tests.unit.test_artifacts import make_zip
from tests.unit.test_registry import PREFIX

ROLE = "arn:aws:iam::000000000000:role/r"
LIMIT = 4096
LAYERS = "arn:aws:lambda:us-east-1:000000000000:layer:"


def zipped(files: dict[str, str]) -> str:
    return base64.b64encode(make_zip(files)).decode()


@pytest.fixture
def control(tmp_path: Path, registry_target: Path | str):  # type: ignore[no-untyped-def]
    store = ArtifactStore(tmp_path / "code", tmp_path / "trees", Limits(unzipped_bytes=LIMIT))
    registry = Registry(registry_target, PREFIX)
    yield ControlPlane(registry, store, InterpreterRegistry({"python3.11": sys.executable}))
    registry.close()


def create_body(**extra: object) -> dict:  # type: ignore[type-arg]
    return {"FunctionName": "f", "Runtime": "python3.11", "Role": ROLE, "Handler": "app.handler",
            "Code": {"ZipFile": zipped({"app.py": "x" * 1000})}, **extra}


def test_code_and_layers_together_must_fit_the_unzipped_limit(control: ControlPlane) -> None:
    async def scenario() -> None:
        big = await control.publish_layer_version("big", {"Content": {"ZipFile": zipped({"python/a.py": "a" * 2000})}})
        bigger = await control.publish_layer_version("bigger", {"Content": {"ZipFile": zipped({"python/b.py": "b" * 1500})}})
        assert (big.unzipped, bigger.unzipped) == (2000, 1500)
        arns = [LAYERS + "big:1", LAYERS + "bigger:1"]
        with pytest.raises(InvalidParameterValue) as info:
            await control.create_function(create_body(Layers=arns))
        assert info.value.message == (f"Function code combined with layers exceeds the maximum allowed size of {LIMIT} "
                                      "bytes. The actual size is 4500 bytes.")
        assert control.registry.list_latest() == []
        await control.create_function(create_body(Layers=arns[:1]))
        control.registry.set_state("f", LATEST, State.ACTIVE, None, None)
        with pytest.raises(InvalidParameterValue, match="The actual size is 4500 bytes."):
            control.update_configuration("f", {"Layers": arns})
        with pytest.raises(InvalidParameterValue, match="The actual size is 4100 bytes."):
            await control.update_code("f", {"ZipFile": zipped({"app.py": "y" * 2100})})
        assert control.registry.get_version("f", LATEST).layers[0]["arn"] == arns[0]
        await control.close()

    asyncio.run(scenario())


def test_a_deleted_layer_version_keeps_its_package_while_a_function_uses_it(control: ControlPlane) -> None:
    async def scenario() -> None:
        used = await control.publish_layer_version("used", {"Content": {"ZipFile": zipped({"python/u.py": "u"})}})
        unused = await control.publish_layer_version("unused", {"Content": {"ZipFile": zipped({"python/n.py": "n"})}})
        await control.create_function(create_body(Layers=[LAYERS + "used:1"]))
        control.delete_layer_version("used", "1")
        control.delete_layer_version("unused", "1")
        zips = {p.name for p in control.artifacts.root.iterdir()}
        assert f"{used.digest}.zip" in zips and f"{unused.digest}.zip" not in zips
        await control.delete("f", None)
        assert f"{used.digest}.zip" not in {p.name for p in control.artifacts.root.iterdir()}
        await control.close()

    asyncio.run(scenario())


def test_architectures_are_stored_and_changed_by_update_code(control: ControlPlane) -> None:
    async def scenario() -> None:
        created = await control.create_function(create_body(Architectures=["arm64"]))
        assert created.architectures == ["arm64"]
        control.registry.set_state("f", LATEST, State.ACTIVE, None, None)
        assert control.registry.get_version("f", LATEST).architectures == ["arm64"]
        control.update_configuration("f", {"MemorySize": 256})  # not a configuration member: kept
        control.registry.update_version("f", LATEST, lambda v: setattr(v, "last_update_status", "Successful"))
        assert control.registry.get_version("f", LATEST).architectures == ["arm64"]
        await control.update_code("f", {"ZipFile": zipped({"app.py": "z"}), "Architectures": ["x86_64"]})
        assert control.registry.get_version("f", LATEST).architectures == ["x86_64"]
        await control.close()

    asyncio.run(scenario())
