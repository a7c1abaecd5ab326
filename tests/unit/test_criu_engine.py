"""The pure parts of the criu restore engine: the RPC request and response encoding, the restore
request built from a runc spec, cgroup file parsing, exit statuses and restored-container records."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from snapfaas.sandbox import criu_rpc
from snapfaas.sandbox.cgroup import Limits, parse_proc_cgroup
from snapfaas.sandbox.criu_container import DEFAULT_DEVICES, NETNS_KEY, exit_status, limits_of, netns_path, restore_request
from snapfaas.sandbox.restored import RestoredLedger, RestoredRecord


def fields(data: bytes) -> list[tuple[int, int | bytes]]:
    return [(field, value) for field, _, value in criu_rpc._fields(data)]


def test_varints_follow_protobuf() -> None:
    assert criu_rpc._varint(1) == b"\x01"
    assert criu_rpc._varint(300) == b"\xac\x02"
    assert criu_rpc._varint(-1) == b"\xff" * 9 + b"\x01"  # int32 -1: ten bytes


def test_restore_request_encodes_type_and_options() -> None:
    request = criu_rpc.RestoreRequest(images_dir_fd=7, work_dir_fd=8, root="/r", config_file="/c.conf",
                                      external_mounts=[("/usr", "/usr")], inherit_fds=[("pipe:[5]", 0)],
                                      cgroup_roots=[("memory", "/a/b"), ("", "/")])
    top = fields(request.encode())
    assert top[0] == (1, criu_rpc.REQ_RESTORE)
    assert top[1][0] == 2
    opts = fields(top[1][1])  # type: ignore[arg-type]
    by_field: dict[int, list[int | bytes]] = {}
    for field, value in opts:
        by_field.setdefault(field, []).append(value)
    assert by_field[1] == [7] and by_field[17] == [8]
    assert by_field[13] == [b"/r"] and by_field[51] == [b"/c.conf"]
    assert by_field[26] == [1]  # rst_sibling
    assert by_field[24] == [0]  # cgroups left to the caller
    assert by_field[12] == [0]  # no notifications
    assert fields(by_field[23][0]) == [(1, b"/usr"), (2, b"/usr")]  # type: ignore[arg-type]
    assert fields(by_field[27][0]) == [(1, b"pipe:[5]"), (2, 0)]  # type: ignore[arg-type]
    assert 25 not in by_field  # no cgroup roots without cgroup management
    managed = criu_rpc.RestoreRequest(images_dir_fd=7, work_dir_fd=8, root="/r", manage_cgroups=True,
                                      cgroup_roots=[("memory", "/a/b"), ("", "/")])
    managed_opts = fields(fields(managed.encode())[1][1])  # type: ignore[arg-type]
    assert [v for f, v in managed_opts if f == 24] == [1]
    assert [fields(v) for f, v in managed_opts if f == 25] == [[(1, b"memory"), (2, b"/a/b")], [(2, b"/")]]  # type: ignore[arg-type]


def test_response_decodes_success_pid_and_errors() -> None:
    ok = criu_rpc._int(1, 2) + criu_rpc._bool(2, True) + criu_rpc._bytes(4, criu_rpc._int(1, 4242))
    assert criu_rpc.decode_response(ok) == criu_rpc.Response(2, True, 4242)
    failed = criu_rpc._int(1, 2) + criu_rpc._bool(2, False) + criu_rpc._int(7, 2) + criu_rpc._str(9, "no images")
    assert criu_rpc.decode_response(failed) == criu_rpc.Response(2, False, None, 2, "no images")
    with pytest.raises(criu_rpc.RpcDecodeError):
        criu_rpc.decode_response(criu_rpc._bool(2, True))  # no type
    with pytest.raises(criu_rpc.RpcDecodeError):
        criu_rpc.decode_response(b"\x0a\x05ab")  # truncated


SPEC = {
    "annotations": {"org.criu.config": "/etc/criu-restore.conf"},
    "root": {"path": "/b/rootfs"},
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/usr", "type": "bind", "source": "/usr"},
        {"destination": "/var/task", "type": "bind", "source": "/code/x"},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
    ],
    "linux": {
        "namespaces": [{"type": "pid"}, {"type": "network", "path": "/run/netns/n1"}],
        "maskedPaths": ["/proc/kcore"],
        "cgroupsPath": "/snapfaas/d/e/sandbox",
        "resources": {"memory": {"limit": 128 << 20, "swap": 128 << 20}, "pids": {"limit": 1024}},
    },
}


def test_restore_request_from_a_runc_spec() -> None:
    request = restore_request(SPEC, 10, 11, "/b/rootfs", ["pipe:[1]", "pipe:[2]", "/dev/null"], 4)
    assert list(request.external_mounts) == [("/usr", "/usr"), ("/var/task", "/code/x"), ("/dev/null", "/dev/null"),
                                            *((d, d) for d in DEFAULT_DEVICES)]
    assert list(request.inherit_fds) == [("pipe:[1]", 0), ("pipe:[2]", 1), (NETNS_KEY, 4)]  # stderr was not a pipe
    assert request.config_file == "/etc/criu-restore.conf"
    assert request.root == "/b/rootfs" and request.images_dir_fd == 10 and request.work_dir_fd == 11
    assert not request.manage_cgroups and not request.cgroup_roots
    without_net = restore_request(SPEC, 10, 11, "/b/rootfs", ["pipe:[1]"], None)
    assert NETNS_KEY not in dict(without_net.inherit_fds)


def test_spec_limits_and_network_namespace() -> None:
    assert limits_of(SPEC) == Limits(128 << 20, 128 << 20, 1024)
    assert netns_path(SPEC) == "/run/netns/n1"
    assert netns_path({"linux": {"namespaces": [{"type": "network"}]}}) is None


def test_proc_cgroup_parsing_splits_joined_controllers() -> None:
    text = "9:name=systemd:/a\n4:cpu,cpuacct:/a/b\n0::/\n"
    assert parse_proc_cgroup(text) == [("name=systemd", "/a"), ("cpu", "/a/b"), ("cpuacct", "/a/b"), ("", "/")]


def test_exit_status_as_runc_reports_it() -> None:
    assert exit_status(3 << 8) == 3
    assert exit_status(signal.SIGKILL) == 128 + signal.SIGKILL


def test_records_round_trip_and_reap(tmp_path: Path) -> None:
    ledger = RestoredLedger(tmp_path / "restored")
    record = RestoredRecord("sf-1", "/snapfaas/test-none/e1/sandbox", "/b", 123)
    assert RestoredRecord.from_json(record.to_json()) == record
    ledger.write(RestoredRecord("sf-1", record.cgroup, "/b"))
    ledger.write(record)  # the update once the pid is known
    assert ledger.records() == [record]
    (tmp_path / "restored" / "junk.json").write_text("[]")
    assert ledger.reap_leftovers() == ["sf-1"]  # its cgroup does not exist: nothing to kill
    assert os.listdir(tmp_path / "restored") == []
    ledger.write(record)
    ledger.remove("sf-1")
    assert ledger.records() == []


def _row(e2e: float, restore: float, total: float) -> dict:
    parts = {"daemon": 1.0, "runc & helpers": 2.0, "CRIU": 3.0, "runtime": 4.0, "total": total}
    return {"restore_e2e_ms": {"median": e2e}, "restore_duration_ms": {"median": restore},
            "cpu": {"per_restore_ms": parts, "runc_by_command_ms": {"runc restore": 20.0}}}


def test_engine_bench_ratios_and_markdown() -> None:
    from snapfaas.bench import engine as engine_bench

    rows = {"runc": _row(100.0, 80.0, 90.0), "criu": _row(75.0, 60.0, 45.0)}
    assert engine_bench.compare(rows) == {"restore_e2e": 0.75, "restore_duration": 0.75, "cpu_total": 0.5}
    rows["criu_over_runc"] = engine_bench.compare(rows)
    text = engine_bench.markdown({"timestamp": "T", "runs": 5, "cpu_batches": 3, "cpu_per_batch": 4,
                                  "functions": {"torch": rows}})
    assert "| torch | criu / runc | 0.75 | 0.75 | 0.5 |" in text
    assert "runc restore 20.0" in text

