"""Node liveness and identity (`snapfaas.cluster.nodes`)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from snapfaas.cluster.nodes import (
    LIVE_WINDOW_S, NodeLoad, NodeRecord, check_advertise_url, check_node_id, classify, load_or_create_node_id,
)
from snapfaas.config import ServerConfig

NOW = dt.datetime(2026, 12, 1, 3, 0, 0, tzinfo=dt.timezone.utc)


def record(node_id: str, age_s: float, draining: bool = False) -> NodeRecord:
    beat = NOW - dt.timedelta(seconds=age_s)
    return NodeRecord(node_id, f"http://{node_id}", beat, beat, NodeLoad(), draining)


def test_states_from_heartbeat_age_draining_and_suspicion() -> None:
    views = classify([record("c", 0.2), record("a", LIVE_WINDOW_S + 0.1), record("b", 1.0), record("d", 0.1, True)],
                     NOW, {"b": 10.0, "c": 4.0}, now=5.0)
    assert [(v.node_id, v.state) for v in views] == [("a", "out"), ("b", "suspect"), ("c", "live"), ("d", "out")]
    assert views[0].age_s == pytest.approx(LIVE_WINDOW_S + 0.1)


def test_a_heartbeat_from_the_future_has_age_zero() -> None:
    assert classify([record("a", -2.0)], NOW, {}, 0.0)[0].age_s == 0.0


def test_load_saturation() -> None:
    assert NodeLoad(inflight=4, capacity=4).saturated
    assert not NodeLoad(inflight=3, capacity=4).saturated
    assert not NodeLoad(inflight=9, capacity=0).saturated


@pytest.mark.parametrize("good", ["a", "node-1", "n.2_x", "A" * 63])
def test_good_node_ids(good: str) -> None:
    assert check_node_id(good) == good


@pytest.mark.parametrize("bad", ["", "-a", "a b", "a/b", "A" * 64, "é"])
def test_bad_node_ids(bad: str) -> None:
    with pytest.raises(ValueError, match="not a node id"):
        check_node_id(bad)


def test_advertise_urls() -> None:
    assert check_advertise_url("http://10.0.0.2:9000/") == "http://10.0.0.2:9000"
    for bad in ("10.0.0.2:9000", "ftp://x", "http://x/path", "http://:9000", "http://x?a=1"):
        with pytest.raises(ValueError, match="--advertise-url"):
            check_advertise_url(bad)


def test_node_id_is_generated_once_per_data_dir(tmp_path: Path) -> None:
    first = load_or_create_node_id(tmp_path)
    assert first.startswith("node-") and load_or_create_node_id(tmp_path) == first
    assert (tmp_path / "node-id").stat().st_mode & 0o777 == 0o600
    other = tmp_path / "other"
    other.mkdir()
    assert load_or_create_node_id(other) != first


def test_config_node_url_and_cluster_switch(tmp_path: Path) -> None:
    cfg = ServerConfig(data_dir=tmp_path, host="0.0.0.0", port=9100)
    assert cfg.node_url == "http://127.0.0.1:9100" and not cfg.clustered
    cfg = ServerConfig(data_dir=tmp_path, host="10.1.2.3", port=9100, advertise_url="http://n1:9100/",
                       registry_url="postgresql://u:p@h/db")
    assert cfg.node_url == "http://n1:9100" and cfg.clustered
    assert ServerConfig(data_dir=tmp_path, store_secret_file=tmp_path / "s").store_secret_path == tmp_path / "s"
