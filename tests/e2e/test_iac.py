"""Infrastructure-as-code round trips: create a function the way Terraform's aws_lambda_function
does (tags, layers, SnapStart, publish), read back everything such tools read after a create and
on every plan, check the reads equal what was sent (no drift), update, read and plan again,
delete, and check the reads answer "gone" - through real boto3 and through the real AWS CLI.
Plus Terraform itself where the machine has it and its AWS provider (skipped otherwise).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from tests.conftest import ACCESS_KEY, ROLE, SECRET_KEY, ServerHandle, invoke_json, make_zip
from tests.e2e.snapstart_support import SNAPSTART, wait_state
from tests.e2e.test_control_auth import AWS_CLI
from tests.e2e.test_layers import PREFIX

Read = Callable[..., tuple[str | None, Any]]  # (operation, **params) -> (error code or None, response)
LAYER_CODE = {"python/iacdep.py": "VALUE = 'v{n}'\n"}
APP = {"app.py": "import iacdep\n\n\ndef handler(event, context):\n    return iacdep.VALUE\n"}


def boto3_reader(lam) -> Read:  # type: ignore[no-untyped-def]
    def read(operation: str, **params: Any) -> tuple[str | None, Any]:
        try:
            return None, getattr(lam, operation)(**params)
        except botocore.exceptions.ClientError as exc:
            return exc.response["Error"]["Code"], exc.response
    return read


def cli_reader(server: ServerHandle, home: Path) -> Read:
    """The same reads through ``aws lambda <operation> --endpoint-url ...``."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "AWS_ACCESS_KEY_ID": ACCESS_KEY,
           "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1",
           "AWS_CONFIG_FILE": str(home / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials")}

    def read(operation: str, **params: Any) -> tuple[str | None, Any]:
        args = [str(AWS_CLI), "lambda", operation.replace("_", "-"), "--endpoint-url", server.endpoint, "--output", "json"]
        for key, value in params.items():
            flag = "--" + "".join("-" + c.lower() if c.isupper() else c for c in key).lstrip("-")
            args += [flag, str(value)]
        done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60, cwd=home)
        if done.returncode != 0:
            marker = "An error occurred ("
            assert marker in done.stderr, done.stderr
            return done.stderr.split(marker, 1)[1].split(")", 1)[0], done.stderr
        return None, json.loads(done.stdout) if done.stdout.strip() else {}
    return read


def read_state(read: Read, name: str) -> dict[str, Any]:
    """What Terraform's aws_lambda_function (and its sibling resources) read, as one state.
    Reads that do not depend on each other are made concurrently, as Terraform's refresh does
    (through the AWS CLI each is a process start of its own)."""
    state: dict[str, Any] = {}
    error, function = read("get_function", FunctionName=name)
    if error is not None:
        return {"error": error}
    config = function["Configuration"]
    by_name = {"FunctionName": name}
    reads: dict[str, tuple[str, dict[str, Any]]] = {
        "signing": ("get_function_code_signing_config", by_name), "versions": ("list_versions_by_function", by_name),
        "tags": ("list_tags", {"Resource": config["FunctionArn"]}), "concurrency": ("get_function_concurrency", by_name),
        "runtime_management": ("get_runtime_management_config", by_name),
        "recursion": ("get_function_recursion_config", by_name),
        **{operation: (operation, by_name) for operation in (
            "get_function_url_config", "get_function_event_invoke_config", "get_policy")},
        "provisioned": ("list_provisioned_concurrency_configs", by_name), "urls": ("list_function_url_configs", by_name),
        "mappings": ("list_event_source_mappings", by_name),
    }
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = {key: pool.submit(read, operation, **params) for key, (operation, params) in reads.items()}
        answers = {key: future.result() for key, future in futures.items()}
    error, signing = answers["signing"]
    assert error is None and signing == {**signing, "FunctionName": name, "CodeSigningConfigArn": ""}, (error, signing)
    error, versions = answers["versions"]
    assert error is None
    latest = max(int(v["Version"]) for v in versions["Versions"] if v["Version"] != "$LATEST")
    error, published = read("get_function", FunctionName=name, Qualifier=str(latest))
    assert error is None
    error, tags = answers["tags"]
    assert error is None
    error, concurrency = answers["concurrency"]
    assert error is None
    error, runtime_management = answers["runtime_management"]
    assert (error, runtime_management.get("UpdateRuntimeOn"), runtime_management.get("FunctionArn")) == (
        None, "Auto", config["FunctionArn"])
    error, recursion = answers["recursion"]
    assert (error, recursion.get("RecursiveLoop")) == (None, "Terminate")
    for operation in ("get_function_url_config", "get_function_event_invoke_config", "get_policy"):
        error, _ = answers[operation]
        assert error == "ResourceNotFoundException", (operation, error)
    error, provisioned = answers["provisioned"]
    assert (error, provisioned.get("ProvisionedConcurrencyConfigs")) == (None, [])
    error, urls = answers["urls"]
    assert (error, urls.get("FunctionUrlConfigs")) == (None, [])
    error, mappings = answers["mappings"]
    assert (error, mappings.get("EventSourceMappings")) == (None, [])
    state.update(
        runtime=config["Runtime"], handler=config["Handler"], role=config["Role"], memory_size=config["MemorySize"],
        timeout=config["Timeout"], description=config["Description"],
        environment=config.get("Environment", {}).get("Variables", {}), architectures=config["Architectures"],
        layers=[layer["Arn"] for layer in config.get("Layers", [])], snap_start=config["SnapStart"]["ApplyOn"],
        ephemeral_storage=config["EphemeralStorage"]["Size"], tags=function.get("Tags", {}),
        tags_listed=tags["Tags"], reserved_concurrency=concurrency.get("ReservedConcurrentExecutions"),
        version=published["Configuration"]["Version"], published_code=published["Configuration"]["CodeSha256"],
        code=config["CodeSha256"], published_state=published["Configuration"]["State"],
        published_layers=[layer["Arn"] for layer in published["Configuration"].get("Layers", [])],
    )
    return state


def plan(desired: dict[str, Any], state: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The attributes whose read-back value differs from the desired one (Terraform's drift)."""
    return {key: (value, state.get(key)) for key, value in desired.items() if state.get(key) != value}


def wait_published(lam, name: str, version: str) -> None:  # type: ignore[no-untyped-def]
    final = wait_state(lam, name, version, ("Active", "Failed"), timeout=120)
    assert final["State"] == "Active", final


def run_cycle(lam, read: Read, name: str) -> None:  # type: ignore[no-untyped-def]
    """create -> read -> plan -> update -> read -> plan -> delete -> read."""
    layers = [lam.publish_layer_version(LayerName=f"{name}-dep", Content={"ZipFile": make_zip(
        {k: v.format(n=n) for k, v in LAYER_CODE.items()})}, CompatibleRuntimes=["python3.11"])["LayerVersionArn"]
              for n in (1, 2)]
    desired = dict(runtime="python3.11", handler="app.handler", role=ROLE, memory_size=256, timeout=10,
                   description="managed by iac", environment={"STAGE": "one"}, architectures=["x86_64"],
                   layers=[layers[0]], snap_start="PublishedVersions", ephemeral_storage=512,
                   tags={"team": "core", "managed-by": "iac"}, reserved_concurrency=None)
    package = make_zip(APP)
    created = lam.create_function(
        FunctionName=name, Runtime="python3.11", Handler="app.handler", Role=ROLE, MemorySize=256, Timeout=10,
        Description="managed by iac", Environment={"Variables": {"STAGE": "one"}}, Architectures=["x86_64"],
        Layers=[layers[0]], SnapStart=SNAPSTART, EphemeralStorage={"Size": 512}, Tags=desired["tags"],
        Code={"ZipFile": package}, Publish=True)
    assert created["Version"] == "1"
    lam.get_waiter("function_active_v2").wait(FunctionName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})
    wait_published(lam, name, "1")
    state = read_state(read, name)
    assert plan(desired, state) == {}
    assert state["tags_listed"] == desired["tags"]
    assert (state["version"], state["published_state"], state["published_layers"]) == ("1", "Active", [layers[0]])
    assert state["published_code"] == state["code"] == created["CodeSha256"]
    assert plan(desired, read_state(read, name)) == {}  # a second plan: still nothing to do

    # update: configuration, layers and tags change, and a new version is published
    lam.update_function_configuration(FunctionName=name, MemorySize=512, Environment={"Variables": {"STAGE": "two"}},
                                      Layers=[layers[1]])
    lam.get_waiter("function_updated_v2").wait(FunctionName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 600})
    arn = PREFIX + f"function:{name}"
    lam.tag_resource(Resource=arn, Tags={"team": "platform"})
    lam.untag_resource(Resource=arn, TagKeys=["managed-by"])
    lam.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=2)
    version = lam.publish_version(FunctionName=name)["Version"]
    wait_published(lam, name, version)
    desired.update(memory_size=512, environment={"STAGE": "two"}, layers=[layers[1]], tags={"team": "platform"},
                   reserved_concurrency=2)
    state = read_state(read, name)
    assert plan(desired, state) == {}
    assert (state["version"], state["published_layers"]) == ("2", [layers[1]])
    assert invoke_json(lam, name, Qualifier="2")[1] == "v2"
    assert invoke_json(lam, name, Qualifier="1")[1] == "v1"  # version 1 keeps its layer

    lam.delete_function(FunctionName=name)
    assert read_state(read, name) == {"error": "ResourceNotFoundException"}
    for operation, params in (("list_tags", {"Resource": arn}), ("get_function_code_signing_config", {"FunctionName": name}),
                              ("get_function_concurrency", {"FunctionName": name})):
        assert read(operation, **params)[0] == "ResourceNotFoundException", operation


def test_iac_cycle_through_boto3(lam) -> None:  # type: ignore[no-untyped-def]
    run_cycle(lam, boto3_reader(lam), "iac-boto3")


def test_iac_cycle_read_through_the_aws_cli(lam, server: ServerHandle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run_cycle(lam, cli_reader(server, tmp_path), "iac-cli")


def test_not_configured_reads_of_a_missing_function_match_aws(lam) -> None:  # type: ignore[no-untyped-def]
    read = boto3_reader(lam)
    missing = PREFIX + "function:nothing-here"
    for operation in ("get_function_code_signing_config", "get_function_concurrency", "get_runtime_management_config",
                      "get_function_recursion_config", "list_function_url_configs", "list_provisioned_concurrency_configs"):
        error, response = read(operation, FunctionName="nothing-here")
        assert (error, response["Error"]["Message"]) == ("ResourceNotFoundException", f"Function not found: {missing}"), operation
    error, response = read("get_function_url_config", FunctionName="nothing-here")
    assert (error, response["Error"]["Message"]) == ("ResourceNotFoundException", "The resource you requested does not exist.")
    error, response = read("get_provisioned_concurrency_config", FunctionName="nothing-here", Qualifier="1")
    assert error == "ResourceNotFoundException"


# -- Terraform -----------------------------------------------------------------------------------
TERRAFORM_SKIP = ("terraform with the hashicorp/aws provider is needed: put terraform on PATH and a provider mirror in "
                  "TF_PLUGIN_CACHE_DIR or a filesystem mirror (~/.terraform.d/plugins) holding registry.terraform.io/hashicorp/aws")


def provider_mirror() -> Path | None:
    """A directory holding registry.terraform.io/hashicorp/aws (plugin cache or filesystem mirror)."""
    candidates = [os.environ.get("TF_PLUGIN_CACHE_DIR"), str(Path.home() / ".terraform.d" / "plugins"),
                  "/usr/share/terraform/plugins", "/usr/local/share/terraform/plugins"]
    for candidate in filter(None, candidates):
        if (Path(candidate) / "registry.terraform.io" / "hashicorp" / "aws").is_dir():
            return Path(candidate)
    return None


TERRAFORM_CONFIG = """
terraform {{
  required_providers {{
    aws = {{ source = "hashicorp/aws" }}
  }}
}}
provider "aws" {{
  region                      = "us-east-1"
  access_key                  = "{key}"
  secret_key                  = "{secret}"
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_requesting_account_id  = true
  skip_region_validation      = true
  endpoints {{
    lambda = "{endpoint}"
  }}
}}
resource "aws_lambda_layer_version" "dep" {{
  layer_name          = "tf-dep"
  filename            = "layer.zip"
  compatible_runtimes = ["python3.11"]
}}
resource "aws_lambda_function" "fn" {{
  function_name = "tf-fn"
  runtime       = "python3.11"
  handler       = "app.handler"
  role          = "{role}"
  filename      = "fn.zip"
  memory_size   = {memory}
  publish       = true
  layers        = [aws_lambda_layer_version.dep.arn]
  snap_start {{
    apply_on = "PublishedVersions"
  }}
  tags = {{
    team = "core"
  }}
}}
"""


def test_terraform_apply_plan_destroy(lam, server: ServerHandle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    terraform = shutil.which("terraform")
    mirror = provider_mirror()
    if terraform is None or mirror is None:
        pytest.skip(TERRAFORM_SKIP)
    (tmp_path / "layer.zip").write_bytes(make_zip({k: v.format(n="tf") for k, v in LAYER_CODE.items()}))
    (tmp_path / "fn.zip").write_bytes(make_zip(APP))
    (tmp_path / "cli.tfrc").write_text(
        f'provider_installation {{\n  filesystem_mirror {{\n    path = "{mirror}"\n  }}\n}}\n')
    env = {**os.environ, "TF_CLI_CONFIG_FILE": str(tmp_path / "cli.tfrc"), "TF_IN_AUTOMATION": "1",
           "CHECKPOINT_DISABLE": "1"}

    def terraform_run(*args: str, memory: int = 256) -> subprocess.CompletedProcess[str]:
        (tmp_path / "main.tf").write_text(TERRAFORM_CONFIG.format(key=ACCESS_KEY, secret=SECRET_KEY, endpoint=server.endpoint,
                                                                  role=ROLE, memory=memory))
        return subprocess.run([terraform, *args, "-no-color"], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)

    done = terraform_run("init", "-input=false")
    assert done.returncode == 0, done.stderr
    done = terraform_run("apply", "-auto-approve", "-input=false")
    assert done.returncode == 0, done.stdout + done.stderr
    assert lam.get_function(FunctionName="tf-fn")["Tags"] == {"team": "core"}
    done = terraform_run("plan", "-detailed-exitcode", "-input=false")
    assert done.returncode == 0, "drift after apply:\n" + done.stdout  # 0: no changes
    done = terraform_run("apply", "-auto-approve", "-input=false", memory=512)
    assert done.returncode == 0, done.stdout + done.stderr
    assert lam.get_function_configuration(FunctionName="tf-fn")["MemorySize"] == 512
    done = terraform_run("plan", "-detailed-exitcode", "-input=false", memory=512)
    assert done.returncode == 0, "drift after update:\n" + done.stdout
    done = terraform_run("destroy", "-auto-approve", "-input=false", memory=512)
    assert done.returncode == 0, done.stdout + done.stderr
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            lam.get_function(FunctionName="tf-fn")
        except lam.exceptions.ResourceNotFoundException:
            return
        time.sleep(0.5)
    raise AssertionError("tf-fn still exists after terraform destroy")
