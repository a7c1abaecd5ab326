"""`snapfaas scan` and `snapfaas deploy --snapstart` through click's CliRunner: exit codes,
formats, --output, and the deploy-time scan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from snapfaas.cli import main

ERROR_SOURCE = "import uuid\nINSTANCE = uuid.uuid4()\n"  # SNAP001, error
WARNING_SOURCE = "import time\nSTARTED = time.time()\n"  # SNAP003, warning
INFO_SOURCE = "import boto3\ns3 = boto3.client('s3')\n"  # SNAP005, info
CLEAN_SOURCE = "import uuid\n\ndef handler(event, context):\n    return str(uuid.uuid4())\n"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(("source", "fail_on", "code"), [
    (ERROR_SOURCE, None, 1),  # default: --fail-on error
    (ERROR_SOURCE, "error", 1),
    (ERROR_SOURCE, "never", 0),
    (WARNING_SOURCE, None, 0),
    (WARNING_SOURCE, "warning", 1),
    (WARNING_SOURCE, "info", 1),
    (INFO_SOURCE, "warning", 0),
    (INFO_SOURCE, "info", 1),
    (CLEAN_SOURCE, "info", 0),
])
def test_exit_code_follows_fail_on(runner: CliRunner, tmp_path: Path, source: str, fail_on: str | None, code: int) -> None:
    path = write(tmp_path, "app.py", source)
    args = ["scan", str(path)] + (["--fail-on", fail_on] if fail_on else [])
    result = runner.invoke(main, args)
    assert result.exit_code == code, result.output


def test_table_is_the_default(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, "app.py", ERROR_SOURCE)
    result = runner.invoke(main, ["scan", str(path)])
    assert "SNAP001" in result.stdout and "1 finding (1 error) in 1 file" in result.stdout


def test_json_to_stdout(runner: CliRunner, tmp_path: Path) -> None:
    write(tmp_path, "src/a.py", ERROR_SOURCE)
    write(tmp_path, "src/b.py", WARNING_SOURCE)
    result = runner.invoke(main, ["scan", str(tmp_path / "src"), "--format", "json", "--fail-on", "never"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [(Path(f["path"]).name, f["rule"]) for f in data["findings"]] == [("a.py", "SNAP001"), ("b.py", "SNAP003")]


def test_sarif_to_file(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, "app.py", WARNING_SOURCE)
    out = tmp_path / "scan.sarif"
    result = runner.invoke(main, ["scan", str(path), "--format", "sarif", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "report written to" in result.stderr
    sarif = json.loads(out.read_text())
    assert sarif["version"] == "2.1.0" and sarif["runs"][0]["results"][0]["ruleId"] == "SNAP003"


def test_table_to_file(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, "app.py", ERROR_SOURCE)
    out = tmp_path / "scan.txt"
    result = runner.invoke(main, ["scan", str(path), "-o", str(out)])
    assert result.exit_code == 1
    assert "SNAP001" in out.read_text() and "\x1b[" not in out.read_text()


def test_several_paths_and_a_zip(runner: CliRunner, tmp_path: Path) -> None:
    import zipfile

    one = write(tmp_path, "one.py", WARNING_SOURCE)
    with zipfile.ZipFile(tmp_path / "pkg.zip", "w") as archive:
        archive.writestr("app.py", ERROR_SOURCE)
    result = runner.invoke(main, ["scan", str(one), str(tmp_path / "pkg.zip"), "--format", "json"])
    assert result.exit_code == 1
    assert sorted(f["rule"] for f in json.loads(result.stdout)["findings"]) == ["SNAP001", "SNAP003"]


def test_usage_errors(runner: CliRunner, tmp_path: Path) -> None:
    assert runner.invoke(main, ["scan"]).exit_code == 2
    assert runner.invoke(main, ["scan", str(tmp_path / "missing.py")]).exit_code == 2
    assert runner.invoke(main, ["scan", str(tmp_path), "--fail-on", "fatal"]).exit_code == 2


# -- deploy --snapstart ----------------------------------------------------------------------------
def deploy_args(source: Path, *extra: str) -> list[str]:
    # port 9 (discard) on loopback: nothing listens, so a deploy that got past the scan fails fast
    return ["deploy", str(source), "--name", "fn", "--snapstart", "--endpoint-url", "http://127.0.0.1:9", *extra]


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNAPFAAS_ACCESS_KEY_ID", "AKIDSCANTEST")
    monkeypatch.setenv("SNAPFAAS_SECRET_ACCESS_KEY", "secret")


def test_deploy_refuses_at_scan_fail_on(runner: CliRunner, tmp_path: Path, keys: None) -> None:
    write(tmp_path, "fn/app.py", ERROR_SOURCE)
    result = runner.invoke(main, deploy_args(tmp_path / "fn", "--scan-fail-on", "error"))
    assert result.exit_code == 1
    assert "SNAP001" in result.stderr and "not deploying" in result.stderr


def test_deploy_prints_findings_but_continues_by_default(runner: CliRunner, tmp_path: Path, keys: None) -> None:
    write(tmp_path, "fn/app.py", WARNING_SOURCE)
    result = runner.invoke(main, deploy_args(tmp_path / "fn"))
    assert "SNAP003" in result.stderr
    assert "not deploying" not in result.output
    assert result.exit_code != 0  # it went on to contact the (absent) server


def test_deploy_without_snapstart_does_not_scan(runner: CliRunner, tmp_path: Path, keys: None) -> None:
    write(tmp_path, "fn/app.py", ERROR_SOURCE)
    args = [a for a in deploy_args(tmp_path / "fn", "--scan-fail-on", "error") if a != "--snapstart"]
    result = runner.invoke(main, args)
    assert "SNAP001" not in result.output and "not deploying" not in result.output
