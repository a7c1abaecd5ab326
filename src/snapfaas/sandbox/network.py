"""Network namespaces for execution environments: one per environment, prepared ahead of demand.

Every environment runs in a network namespace of its own (runc joins it by path; a snapshot's
namespace is *external* to CRIU, so a restore simply joins a fresh one and CRIU neither dumps
nor locks any network state). Each namespace is a `NetSlot`::

    host netns                                   environment netns  /run/netns/<slot.name>
    ----------                                   ---------------------------------------
    <slot.host_if> 10.200.B.x+1/30  <== veth ==>  eth0 10.200.B.x+2/30, default via x+1
                                                  lo 127.0.0.1 -- daemon's listener :9001
                                                     (credentials endpoint, Lambda API for granted
                                                      invokes, later the Runtime API)

The daemon opens the :9001 listener *inside* the namespace (a thread `setns`es into it), so the
address exists for that one environment only and is the same in every environment: it can be
baked into a snapshot (``AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:9001/...``).

Firewall (one nftables table per server, `ruleset`): packets from the environments' veths may
leave through NAT (masquerade) to anything except the host itself (input chain: dropped; the
host's loopback is not even routable from there), link-local/metadata (169.254.0.0/16),
loopback, multicast and the environments' own subnet (no environment reaches another); nothing
new may enter an environment from outside. IPv6 is not forwarded.

Blocks: a server claims one address block (a /20 of `SUBNET`, 1024 slots) and interface-name
prefix by holding an flock on ``<lock_dir>/block-<n>.lock`` for its lifetime, so several servers
on one host never collide, and whatever a dead server left in its block (namespaces, veths,
its nftables table) is removed by the next server that claims it.

`plan` and `ruleset` are pure; `NetworkPool` does the I/O (rtnetlink, nft, setns) in threads.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import dataclasses
import fcntl
import ipaddress
import logging
import os
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from snapfaas.errors import ServiceError
from snapfaas.sandbox import netlink

logger = logging.getLogger(__name__)
SUBNET = ipaddress.ip_network("10.200.0.0/16")
BLOCK_PREFIX = 20  # one server: a /20 = 1024 /30 slots
SLOT_PREFIX = 30
BLOCKS = 2 ** (BLOCK_PREFIX - SUBNET.prefixlen)
SLOTS_PER_BLOCK = 2 ** (SLOT_PREFIX - BLOCK_PREFIX)
NETNS_DIR = Path("/run/netns")
LOW_WATER = 2  # prepared namespaces below which an acquire refills the pool at once
SERVICE_PORT = 9001  # inside every environment: 127.0.0.1:9001, as Lambda's runtime API address
FORBIDDEN_V4 = ("127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4", "0.0.0.0/8", "100.64.0.0/10")
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MNT_DETACH = 0x2
_libc = ctypes.CDLL(None, use_errno=True)


class NetworkError(ServiceError):
    """A network namespace could not be prepared or removed; the message names the step."""


@dataclasses.dataclass(frozen=True)
class NetSlot:
    """One environment's network: its namespace, the veth pair and the /30 between them."""

    block: int
    index: int
    name: str
    host_if: str
    host_ip: str
    env_ip: str

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name


def block_prefix(block: int) -> str:
    """Interface and namespace name prefix of `block` (names must fit IFNAMSIZ, 15 chars)."""
    return f"sf{block:02x}"


def block_network(block: int) -> ipaddress.IPv4Network:
    return list(SUBNET.subnets(new_prefix=BLOCK_PREFIX))[block]  # type: ignore[return-value]


def plan(block: int, index: int) -> NetSlot:
    """Names and addresses of slot `index` of `block` (pure)."""
    if not 0 <= block < BLOCKS or not 0 <= index < SLOTS_PER_BLOCK:
        raise ValueError(f"no slot {index} in block {block}")
    base = block_network(block).network_address + index * 4
    prefix = block_prefix(block)
    return NetSlot(block, index, f"{prefix}n{index:04x}", f"{prefix}h{index:04x}", str(base + 1), str(base + 2))


def table_name(block: int) -> str:
    """The nftables table (family inet) of `block`."""
    return f"snapfaas_{block_prefix(block)}"


def ruleset(block: int) -> str:
    """The nftables table of `block` (pure): see the module docstring."""
    prefix = block_prefix(block)
    table = table_name(block)
    envs = f'"{prefix}h*"'
    forbidden = ", ".join((str(block_network(block)), str(SUBNET), *FORBIDDEN_V4))
    return f"""table inet {table} {{
    chain input {{
        type filter hook input priority -10; policy accept;
        iifname {envs} drop
    }}
    chain forward {{
        type filter hook forward priority -10; policy accept;
        iifname {envs} meta nfproto ipv6 drop
        iifname {envs} ip daddr {{ {forbidden} }} drop
        iifname {envs} fib daddr type {{ local, broadcast, multicast }} drop
        iifname {envs} accept
        oifname {envs} ct state established,related accept
        oifname {envs} drop
    }}
    chain postrouting {{
        type nat hook postrouting priority 100; policy accept;
        ip saddr {block_network(block)} oifname != {envs} masquerade
    }}
}}
"""


def _run(step: str, argv: list[str], stdin: str | None = None) -> None:
    """Run a network tool (the host's one-time set-up: forwarding, the firewall)."""
    out = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if out.returncode != 0:
        raise NetworkError(f"network setup failed at step '{step}': {' '.join(argv[:4])}: {out.stderr.strip()[-300:]}")


def _netlink_step(route: netlink.Route, step: str, request: tuple[int, int, bytes]) -> None:
    try:
        route.request(step, request)
    except OSError as exc:
        raise NetworkError(f"network setup failed at step '{step}': {exc.strerror or exc}") from exc


def _libc_call(step: str, result: int) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise NetworkError(f"network setup failed at step '{step}': {os.strerror(err)}")


def create_namespace(path: Path) -> None:
    """A new network namespace pinned at `path` (what `ip netns add` does, without a process):
    the calling thread unshares its network namespace, bind-mounts it onto `path`, and goes
    back to its own. Call it from a worker thread."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0)
    os.close(fd)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _libc_call("unshare network namespace", _libc.unshare(CLONE_NEWNET))
        try:
            _libc_call("pin network namespace",
                       _libc.mount(b"/proc/thread-self/ns/net", str(path).encode(), None, MS_BIND, None))
        finally:
            _setns(own)
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(own)


def delete_namespace(path: Path) -> None:
    """Unpin a namespace made by `create_namespace` (or `ip netns add`); the kernel frees it,
    and the veth inside it with its host end, once nothing uses it any more. Idempotent."""
    _libc.umount2(str(path).encode(), MNT_DETACH)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _setns(fd: int) -> None:
    _libc_call("enter network namespace", _libc.setns(fd, CLONE_NEWNET))


def in_namespace(path: Path, action: Callable[[], object]) -> object:
    """Run `action` in the calling thread while it is inside the network namespace at `path`
    (setns is per thread); the thread goes back to its own namespace afterwards. Meant for a
    worker thread: never call it on the event loop's thread."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            return action()
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


def _listen_loopback(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class BlockClaim:
    """This server's address block, held by an flock for the life of the process."""

    def __init__(self, lock_dir: Path) -> None:
        self.lock_dir = lock_dir
        self.block = -1
        self._fd = -1

    def acquire(self) -> int:
        for block in range(BLOCKS):
            fd = os.open(self.lock_dir / f"block-{block}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.block, self._fd = block, fd
            return block
        raise NetworkError(f"network setup failed at step 'claim block': all {BLOCKS} address blocks are in use by other servers")

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclasses.dataclass
class PreparedNet:
    """A namespace ready for an environment, with the daemon's listener inside it."""

    slot: NetSlot
    listener: socket.socket


class NetworkPool:
    """Prepared network namespaces of one server.

    Contract: `setup` claims a block, clears what a previous owner left in it and installs the
    firewall; `start` begins keeping `ready_target` namespaces prepared in the background;
    `acquire` returns a ready one at once (or prepares one in a thread when the pool ran dry)
    and `started` reports that its environment runs; `release` removes a used namespace in the
    background (an environment's namespace is never reused); `close` removes every namespace
    and the firewall table.
    """

    def __init__(self, lock_dir: Path, ready_target: int = 8) -> None:
        self.claim = BlockClaim(lock_dir)
        self.ready_target = ready_target
        self._ready: collections.deque[PreparedNet] = collections.deque()
        self._free: collections.deque[int] = collections.deque()  # FIFO: a slot's names are reused last
        self._in_use: dict[str, PreparedNet] = {}
        self._lock = threading.Lock()
        self._filler: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._starting = 0  # environments between `acquire` and `started`
        self._quiet = asyncio.Event()  # set while none is starting: background refills wait for it
        self._quiet.set()
        self._removals: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def block(self) -> int:
        return self.claim.block

    # -- setup -----------------------------------------------------------------------------
    def setup(self) -> str:
        """Claim a block, clear leftovers, install the firewall; blocking (call at startup)."""
        block = self.claim.acquire()
        self._free = collections.deque(range(SLOTS_PER_BLOCK))
        NETNS_DIR.mkdir(mode=0o755, exist_ok=True)
        removed = self._clear_block(block)
        _run("enable forwarding", ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        table = table_name(block)
        subprocess.run(["nft", "delete", "table", "inet", table], capture_output=True)
        _run("install firewall", ["nft", "-f", "-"], ruleset(block))
        note = f", removed {removed} left by a previous server" if removed else ""
        return f"network: block {block} ({block_network(block)}), nftables table inet {table}{note}"

    @staticmethod
    def _clear_block(block: int) -> int:
        """Remove what a previous owner of `block` left: its namespaces, and host veth ends
        still there (the kernel tears a veth down with its namespace, asynchronously)."""
        prefix = block_prefix(block)
        names = [p for p in NETNS_DIR.glob(f"{prefix}n*")] if NETNS_DIR.is_dir() else []
        for path in names:
            delete_namespace(path)
        for ifname in os.listdir("/sys/class/net"):
            if ifname.startswith(f"{prefix}h"):
                subprocess.run(["ip", "link", "delete", ifname], capture_output=True)
        return len(names)

    def start(self) -> None:
        self._filler = asyncio.create_task(self._fill_loop(), name="netns-filler")

    async def close(self) -> None:
        self._closing = True
        if self._filler is not None:
            self._filler.cancel()
            await asyncio.gather(self._filler, return_exceptions=True)
        await asyncio.gather(*self._removals, return_exceptions=True)
        leftover = [*self._ready, *self._in_use.values()]
        self._ready.clear()
        self._in_use.clear()
        await asyncio.to_thread(self._teardown_all, leftover)

    def _teardown_all(self, nets: list[PreparedNet]) -> None:
        for net in nets:
            self._remove(net)
        if self.block >= 0:
            subprocess.run(["nft", "delete", "table", "inet", table_name(self.block)], capture_output=True)
            self._clear_block(self.block)
        self.claim.release()

    # -- the pool --------------------------------------------------------------------------
    async def acquire(self) -> PreparedNet:
        """A prepared namespace; the caller reports `started` once its environment runs (or
        failed to start), so that background refills do not compete with starting environments."""
        self._starting += 1
        self._quiet.clear()
        if self._ready:
            net = self._ready.popleft()
        else:
            net = await asyncio.to_thread(self._prepare_next)  # someone is waiting
        self._in_use[net.slot.name] = net
        if len(self._ready) < LOW_WATER:
            self._wake.set()  # else refilled once nothing is starting (`started`), not while this one starts
        return net

    def started(self) -> None:
        """One environment that acquired a namespace is running (or gave up starting)."""
        self._starting = max(0, self._starting - 1)
        if not self._starting:
            self._quiet.set()
            if len(self._ready) < self.ready_target:
                self._wake.set()  # refill now that nothing competes for the CPU

    def release(self, net: PreparedNet) -> None:
        """Remove `net` in the background; its container must be gone. Idempotent."""
        if self._in_use.pop(net.slot.name, None) is None:
            return
        task = asyncio.ensure_future(asyncio.to_thread(self._remove, net))
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)
        self._wake.set()

    async def _fill_loop(self) -> None:
        """Keep `ready_target` namespaces prepared: one at a time, and only while no environment
        is starting, unless fewer than `LOW_WATER` are left (a burst would otherwise find none)."""
        while True:
            while len(self._ready) < self.ready_target and not self._closing:
                if len(self._ready) >= LOW_WATER:
                    await self._quiet.wait()
                try:
                    self._ready.append(await asyncio.to_thread(self._prepare_next))
                except NetworkError as exc:
                    logger.error("%s", exc.message)
                    break
            self._wake.clear()
            await self._wake.wait()

    def _take_index(self) -> int:
        with self._lock:
            if not self._free:
                raise NetworkError(f"network setup failed at step 'allocate slot': all {SLOTS_PER_BLOCK} slots of block {self.block} are in use")
            return self._free.popleft()

    def _prepare_next(self) -> PreparedNet:
        index = self._take_index()
        slot = plan(self.block, index)
        try:
            return PreparedNet(slot, self._prepare(slot))
        except (NetworkError, OSError) as exc:
            self._free_slot(slot)
            if isinstance(exc, NetworkError):
                raise
            raise NetworkError(f"network setup failed at step 'configure namespace' for {slot.name}: {exc}") from exc

    @staticmethod
    def _prepare(slot: NetSlot) -> socket.socket:
        """Create the namespace and veth pair, address both ends, and open the listener: rtnetlink
        requests from this thread (`sandbox.netlink`), in the host's namespace and then in the
        new one, instead of two `ip` processes (~3 ms of CPU each, plus `nice`'s exec); they
        cost too little to need the lower priority those ran at ahead of demand."""
        create_namespace(slot.path)
        netns_fd = os.open(slot.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with netlink.Route() as host:
                _netlink_step(host, "create veth", netlink.veth_pair(slot.host_if, "eth0", netns_fd))
                host_index = socket.if_nametoindex(slot.host_if)
                _netlink_step(host, "address host veth", netlink.ipv4_address(host_index, slot.host_ip, SLOT_PREFIX))
                _netlink_step(host, "host veth up", netlink.link_up(host_index))
        finally:
            os.close(netns_fd)

        def inside() -> socket.socket:
            for knob in ("default", "eth0"):
                with open(f"/proc/sys/net/ipv6/conf/{knob}/disable_ipv6", "w") as f:
                    f.write("1")
            with netlink.Route() as route:
                _netlink_step(route, "loopback up", netlink.link_up(socket.if_nametoindex("lo")))
                index = socket.if_nametoindex("eth0")
                _netlink_step(route, "address eth0", netlink.ipv4_address(index, slot.env_ip, SLOT_PREFIX))
                _netlink_step(route, "eth0 up", netlink.link_up(index))
                _netlink_step(route, "default route", netlink.default_route(slot.host_ip))
            return _listen_loopback(SERVICE_PORT)

        return in_namespace(slot.path, inside)  # type: ignore[return-value]

    def _remove(self, net: PreparedNet) -> None:
        net.listener.close()
        self._free_slot(net.slot)

    def _free_slot(self, slot: NetSlot) -> None:
        """Unpin the slot's namespace (the kernel tears it down with its veth pair once its last
        process and socket are gone, asynchronously) and queue the slot for reuse after every
        other free one, so its names are not reused while that may still run."""
        delete_namespace(slot.path)
        with self._lock:
            self._free.append(slot.index)
