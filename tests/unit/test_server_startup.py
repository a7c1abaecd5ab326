"""Startup decisions of `snapfaas serve` that need no sandbox: key disclosure and transport."""

from __future__ import annotations

import dataclasses

import ssl
from pathlib import Path

import pytest

from snapfaas import credentials
from snapfaas.config import ServerConfig
from snapfaas.server import Server
from snapfaas.transport import TlsConfigError, is_loopback, server_ssl_context
from tests.tls_support import self_signed


def started(config: ServerConfig) -> tuple[Server, list[str]]:
    said: list[str] = []
    return Server(config, {}, say=said.append), said


def test_generated_secret_is_printed_only_at_the_first_start(tmp_path: Path) -> None:
    config = ServerConfig(data_dir=tmp_path)
    first, said = started(config)
    keys = first._keys()
    ((akid, secret),) = keys.items()
    assert any(secret in line for line in said)
    assert (tmp_path / credentials.FILE_NAME).is_file()
    for _ in range(2):  # every later start
        later, said_later = started(config)
        assert later._keys() == keys
        assert said_later and not any(secret in line for line in said_later)
        assert any(akid in line for line in said_later)


def test_configured_keys_are_never_printed(tmp_path: Path) -> None:
    server, said = started(ServerConfig(data_dir=tmp_path, credentials={"SFIAK": "configured-secret"}))
    assert server._keys() == {"SFIAK": "configured-secret"}
    assert not any("configured-secret" in line for line in said)


@pytest.mark.parametrize(("host", "warned"), [("127.0.0.1", False), ("127.0.0.2", False), ("::1", False),
                                              ("localhost", False), ("0.0.0.0", True), ("::", True),
                                              ("192.0.2.10", True), ("example.internal", True)])
def test_plain_http_off_loopback_warns(tmp_path: Path, host: str, warned: bool) -> None:
    server, said = started(ServerConfig(data_dir=tmp_path, host=host))
    assert server._transport() is None
    assert any(line.startswith("WARNING: serving plain HTTP on non-loopback address") for line in said) is warned
    assert is_loopback(host) is not warned


def test_tls_context_and_no_warning(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls")
    server, said = started(ServerConfig(data_dir=tmp_path, host="0.0.0.0", tls_cert=cert, tls_key=key))
    context = server._transport()
    assert isinstance(context, ssl.SSLContext) and context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert said == []
    assert server.config.endpoint_url.startswith("https://")
    # functions reach the API on their own namespace's loopback listener, plain HTTP (never the TLS port)
    assert server.config.function_api_url == "http://127.0.0.1:9001"
    host_mode = dataclasses.replace(server.config, sandbox_network="host")
    assert host_mode.function_api_url == f"https://127.0.0.1:{server.config.port}"


def test_bad_tls_files_fail_clearly(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls")
    other_cert, other_key = self_signed(tmp_path / "other")
    with pytest.raises(TlsConfigError, match="step 'read certificate'.*missing.pem"):
        server_ssl_context(tmp_path / "missing.pem", key)
    with pytest.raises(TlsConfigError, match="step 'read private key'"):
        server_ssl_context(cert, tmp_path / "missing-key.pem")
    with pytest.raises(TlsConfigError, match="step 'load certificate.*key must match"):
        server_ssl_context(cert, other_key)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(TlsConfigError, match="step 'load certificate"):
        server_ssl_context(garbage, key)
    assert server_ssl_context(other_cert, other_key) is not None
