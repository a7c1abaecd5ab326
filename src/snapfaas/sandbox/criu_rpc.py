"""CRIU's RPC messages (`criu swrk`), the few fields a restore needs, encoded by hand.

`criu swrk <fd>` reads one `criu_req` protobuf message from a SOCK_SEQPACKET socket at `fd` and
answers with `criu_resp` messages (images/rpc.proto in CRIU's source; field numbers below are
that file's). Only a restore request is built here, and only the fields snapfaas sets, so the
encoder is the handful of protobuf wire rules those need (varints, length-delimited strings and
sub-messages) rather than a protobuf dependency. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence

REQ_RESTORE = 2
REQ_NOTIFY = 6
# criu_opts field numbers
_IMAGES_DIR_FD = 1
_EVASIVE_DEVICES = 6
_LOG_LEVEL = 9
_LOG_FILE = 10
_NOTIFY_SCRIPTS = 12
_ROOT = 13
_WORK_DIR_FD = 17
_EXT_MNT = 23
_MANAGE_CGROUPS = 24
_CG_ROOT = 25
_RST_SIBLING = 26
_INHERIT_FD = 27
_CONFIG_FILE = 51
# criu_resp field numbers
_RESP_TYPE = 1
_RESP_SUCCESS = 2
_RESP_RESTORE = 4
_RESP_CR_ERRNO = 7
_RESP_CR_ERRMSG = 9


class RpcDecodeError(ValueError):
    """A `criu_resp` that is not valid protobuf (CRIU died mid-write, or another peer)."""


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:  # keys, flags, fds and most lengths: one byte
        return _BYTES[value]
    if value < 0:
        value &= (1 << 64) - 1  # protobuf encodes negative int32 as a 10-byte two's complement varint
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_BYTES = tuple(bytes((n,)) for n in range(0x80))


@functools.cache
def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _int(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value)


def _bool(field: int, value: bool) -> bytes:
    return _int(field, 1 if value else 0)


def _bytes(field: int, value: bytes) -> bytes:
    return _key(field, 2) + _varint(len(value)) + value


def _str(field: int, value: str) -> bytes:
    return _bytes(field, value.encode())


@dataclasses.dataclass(frozen=True)
class RestoreRequest:
    """The restore runc would ask for (libcontainer's `Restore`), minus its notifications.

    Descriptor numbers are the CRIU process's own. `external_mounts` maps a mount point in the
    container (the key the checkpoint recorded) to its host source; `inherit_fds` maps a key the
    checkpoint recorded (``pipe:[ino]``, ``extRootNetNS``) to the descriptor standing in for it;
    `manage_cgroups`: False (the default) leaves cgroups to the caller: CRIU neither mounts the
    hierarchies in a scratch yard nor starts its cgroup helper process nor moves the restored
    tasks, which stay in the cgroups CRIU itself was moved into before the request (and which
    the image's cgroup sets are then not compared with). True is runc's "soft" mode: tasks are
    moved into the image's cgroup sets under `cgroup_roots`, which maps a controller ("" for
    the rest) to the cgroup the restored tasks go to.
    """

    images_dir_fd: int
    work_dir_fd: int
    root: str
    log_file: str = "restore.log"
    log_level: int = 4
    config_file: str | None = None
    external_mounts: Sequence[tuple[str, str]] = ()
    inherit_fds: Sequence[tuple[str, int]] = ()
    manage_cgroups: bool = False
    cgroup_roots: Sequence[tuple[str, str]] = ()

    def opts(self) -> bytes:
        parts = [
            _int(_IMAGES_DIR_FD, self.images_dir_fd),
            _bool(_EVASIVE_DEVICES, True),
            _int(_LOG_LEVEL, self.log_level),
            _str(_LOG_FILE, self.log_file),
            _bool(_NOTIFY_SCRIPTS, False),
            _str(_ROOT, self.root),
            _int(_WORK_DIR_FD, self.work_dir_fd),
            *(_bytes(_EXT_MNT, _str(1, key) + _str(2, val)) for key, val in self.external_mounts),
            _bool(_MANAGE_CGROUPS, self.manage_cgroups),
            *(_bytes(_CG_ROOT, (_str(1, ctrl) if ctrl else b"") + _str(2, path))
              for ctrl, path in (self.cgroup_roots if self.manage_cgroups else ())),
            _bool(_RST_SIBLING, True),
            *(_bytes(_INHERIT_FD, _str(1, key) + _int(2, fd)) for key, fd in self.inherit_fds),
        ]
        if self.config_file is not None:
            parts.append(_str(_CONFIG_FILE, self.config_file))
        return b"".join(parts)

    def encode(self) -> bytes:
        """The `criu_req` message: type RESTORE with these options."""
        return _int(1, REQ_RESTORE) + _bytes(2, self.opts())


@dataclasses.dataclass(frozen=True)
class Response:
    """A decoded `criu_resp`: its type, success, the restored root's pid (RESTORE), CRIU's errno
    and error message (on failure)."""

    type: int
    success: bool
    pid: int | None = None
    errno: int | None = None
    errmsg: str | None = None


def _fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of a protobuf message; raises RpcDecodeError."""
    i, n = 0, len(data)

    def varint() -> int:
        nonlocal i
        shift = result = 0
        while True:
            if i >= n or shift > 63:
                raise RpcDecodeError("truncated varint")
            byte = data[i]
            i += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7

    while i < n:
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            yield field, wire, varint()
        elif wire == 2:
            length = varint()
            if i + length > n:
                raise RpcDecodeError("truncated field")
            yield field, wire, data[i:i + length]
            i += length
        elif wire == 5:
            i += 4
        elif wire == 1:
            i += 8
        else:
            raise RpcDecodeError(f"unsupported wire type {wire}")
        if i > n:
            raise RpcDecodeError("truncated field")


def _signed32(value: int) -> int:
    value &= (1 << 32) - 1
    return value - (1 << 32) if value >= 1 << 31 else value


def decode_response(data: bytes) -> Response:
    """Decode a `criu_resp`; raises RpcDecodeError if it is not one."""
    kind: int | None = None
    success: bool | None = None
    pid = errno = None
    errmsg = None
    for field, wire, value in _fields(data):
        if field == _RESP_TYPE and wire == 0:
            kind = int(value)  # type: ignore[arg-type]
        elif field == _RESP_SUCCESS and wire == 0:
            success = bool(value)
        elif field == _RESP_RESTORE and wire == 2:
            for sub, sub_wire, sub_value in _fields(value):  # type: ignore[arg-type]
                if sub == 1 and sub_wire == 0:
                    pid = _signed32(int(sub_value))  # type: ignore[arg-type]
        elif field == _RESP_CR_ERRNO and wire == 0:
            errno = _signed32(int(value))  # type: ignore[arg-type]
        elif field == _RESP_CR_ERRMSG and wire == 2:
            errmsg = bytes(value).decode(errors="replace")  # type: ignore[arg-type]
    if kind is None or success is None:
        raise RpcDecodeError("criu_resp without type or success")
    return Response(kind, success, pid, errno, errmsg)
