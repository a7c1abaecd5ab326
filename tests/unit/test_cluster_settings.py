"""Cluster settings of `snapfaas serve` used by the event queue: --registry, --node-id,
--event-lease, and the stable node id kept in the data dir."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from snapfaas.cli import main
from snapfaas.config import ServerConfig
from snapfaas.cluster.nodes import check_node_id, load_or_create_node_id as stable_node_id


def test_the_event_queue_is_events_db_unless_a_registry_url_is_given(tmp_path: Path) -> None:
    assert ServerConfig(tmp_path).events_db == tmp_path / "events.db"
    url = "postgresql://u:p@127.0.0.1:5432/snapfaas"
    assert ServerConfig(tmp_path, registry_url=url).events_db == url


def test_serve_refuses_a_registry_that_is_not_postgresql_without_echoing_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "--data-dir", str(tmp_path), "--registry", "mysql://u:secret@h/db"])
    assert result.exit_code == 2 and "--registry takes a postgresql://" in result.output
    assert "secret" not in result.output


@pytest.mark.parametrize("bad", ["", "-x", "a b", "a/b", "x" * 64, "nöde"])
def test_serve_refuses_a_bad_node_id(tmp_path: Path, bad: str) -> None:
    result = CliRunner().invoke(main, ["serve", "--data-dir", str(tmp_path), "--node-id", bad])
    assert result.exit_code == 2 and "not a node id" in result.output


def test_serve_refuses_a_non_positive_lease(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "--data-dir", str(tmp_path), "--event-lease", "0"])
    assert result.exit_code == 2 and "--event-lease" in result.output


def test_the_node_id_is_generated_once_per_data_dir(tmp_path: Path) -> None:
    first = stable_node_id(tmp_path)
    assert check_node_id(first) == first and first.startswith("node-")
    assert stable_node_id(tmp_path) == first
    assert stat.S_IMODE((tmp_path / "node-id").stat().st_mode) == 0o600
    other = tmp_path / "other"
    other.mkdir()
    assert stable_node_id(other) != first
    assert check_node_id("host-3.rack_1") == "host-3.rack_1"


def test_a_damaged_node_id_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "node-id").write_text("not a node id!\n")
    with pytest.raises(ValueError, match="node-id: not a node id"):
        stable_node_id(tmp_path)
