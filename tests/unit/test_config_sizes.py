"""Size settings: --log-max-bytes / --snapshot-cache-bytes parsing and the cache budget default."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from snapfaas.cli import main
from snapfaas.config import ServerConfig, mem_total, parse_size


@pytest.mark.parametrize(("text", "value"), [("16777216", 16 << 20), ("512K", 512 << 10), ("16M", 16 << 20),
                                              ("2G", 2 << 30), ("1.5g", 3 << 29), ("16MiB", 16 << 20), ("1", 1)])
def test_parse_size_accepts_bytes_and_binary_units(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "0", "-5M", "lots", "M", "1X", "inf", "nan"])
def test_parse_size_rejects_the_rest(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_cache_budget_defaults_to_a_quarter_of_memtotal(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       8000000 kB\nMemFree:        100 kB\n")
    assert mem_total(meminfo) == 8_000_000 * 1024
    assert ServerConfig(tmp_path).snapshot_cache_budget(meminfo) == 2_000_000 * 1024
    assert ServerConfig(tmp_path, snapshot_cache_bytes=123).snapshot_cache_budget(meminfo) == 123
    assert ServerConfig(tmp_path).log_max_bytes == 16 << 20


def test_serve_rejects_a_bad_size_before_doing_anything() -> None:
    result = CliRunner().invoke(main, ["serve", "--log-max-bytes", "lots"])
    assert result.exit_code == 2 and "not a positive size" in result.output
    result = CliRunner().invoke(main, ["serve", "--snapshot-cache-bytes", "0"])
    assert result.exit_code == 2 and "not a positive size" in result.output
    for flag in ("--store-cache-bytes", "--store-memory-bytes"):
        result = CliRunner().invoke(main, ["serve", flag, "0"])
        assert result.exit_code == 2 and "not a positive size" in result.output, flag


def test_store_settings_default_under_the_data_dir(tmp_path: Path) -> None:
    config = ServerConfig(tmp_path)
    assert config.store_origin_url == str(tmp_path / "store")
    assert config.store_cache_path == tmp_path / "store-cache"
    assert config.store_secret_path == tmp_path / "store.secret"
    assert config.store_grace_s == 0  # a directory origin: this server's own publishes are fenced exactly
    assert config.store_memory_bytes < config.store_cache_bytes
    shared = ServerConfig(tmp_path, store_origin="s3://bucket/prefix", store_cache_dir=tmp_path / "c")
    assert shared.store_origin_url == "s3://bucket/prefix" and shared.store_cache_path == tmp_path / "c"
    assert shared.store_grace_s > 0  # other hosts may be publishing to it


def test_an_s3_endpoint_needs_an_s3_origin(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "--data-dir", str(tmp_path), "--store-s3-endpoint-url", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "needs an s3:// --store-origin" in result.output
