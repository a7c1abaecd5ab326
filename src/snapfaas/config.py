"""Server configuration: one frozen object, built once from CLI flags and the environment.

Nothing in the package reads ``os.environ`` at import time; the CLI builds a `ServerConfig`
with `ServerConfig.build(...)` (passing the environment explicitly) and hands it down.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from pathlib import Path

from snapfaas.sandbox.ids import DEFAULT_BASE, DEFAULT_SLICES, SUBGID, SUBUID, IdRange
from snapfaas.snapshot.sockets import DEFAULT_CONNECTION_MODE

PYTHON_RUNTIMES = ("python3.11", "python3.12", "python3.13")
# OS-only runtimes: a zip with an executable `bootstrap` speaking the HTTP Runtime API
# (runtime/custom.py); their interpreter is the one the in-sandbox supervisor runs on and the
# `python3` on the sandbox's PATH (sandbox/interpreter.py)
CUSTOM_RUNTIMES = ("provided.al2023", "provided.al2")
SUPPORTED_RUNTIMES = PYTHON_RUNTIMES + CUSTOM_RUNTIMES


def is_custom(runtime: str) -> bool:
    """An OS-only runtime: the sandbox runs the Runtime API supervisor and the zip's bootstrap."""
    return runtime in CUSTOM_RUNTIMES
# the Python runtimes AWS accepts SnapStart for (python3.12 and later); `--snapstart-runtimes` widens it
AWS_SNAPSTART_RUNTIMES = ("python3.12", "python3.13", "python3.14")
ACCESS_KEY_ENV = "SNAPFAAS_ACCESS_KEY_ID"
RAM_ROOT = Path("/run/snapfaas")  # root-owned, on a tmpfs: per-server state that belongs in RAM (see hostpaths)
ENV_SERVICES = "127.0.0.1:9001"  # inside every environment's own network namespace (see sandbox/network.py)
CREDENTIALS_PATH = "/2021-04-23/credentials"  # Lambda's container-credentials path
SECRET_KEY_ENV = "SNAPFAAS_SECRET_ACCESS_KEY"
INTERPRETER_MIRRORS = Path("/var/lib/snapfaas/interpreters")  # host-wide, shared by every daemon (sandbox/mirrors.py)
STORE_SHARED_GRACE_S = 600.0  # GC spares younger unreferenced objects of an origin other hosts may write


@dataclasses.dataclass(frozen=True)
class Limits:
    """Lambda's quotas, as enforced by this server."""

    sync_payload_bytes: int = 6 * 1024 * 1024
    event_payload_bytes: int = 256 * 1024
    response_bytes: int = 6 * 1024 * 1024 + 100  # 6291556, the figure Lambda's ResponseSizeTooLarge message states
    zip_bytes: int = 50 * 1024 * 1024
    unzipped_bytes: int = 250 * 1024 * 1024
    zip_entries: int = 20_000
    log_tail_bytes: int = 4096


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Everything `snapfaas serve` needs.

    `runtimes` maps a Lambda runtime name to an interpreter command or path; a runtime absent
    from the map falls back to the matching ``python3.X`` on ``PATH`` when first used.
    """

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 9000
    region: str = "us-east-1"
    account_id: str = "000000000000"
    auth: bool = True
    credentials: Mapping[str, str] = dataclasses.field(default_factory=dict)
    runtimes: Mapping[str, str] = dataclasses.field(default_factory=dict)
    keep_alive_s: float = 300.0
    max_environments: int = 32
    admission_wait_s: float = 1.0  # a request finding a concurrency limit reached waits this long for a slot before its 429
    sandbox_uid: int = 1000  # the function's uid (and gid) inside its user namespace
    id_range_base: int = DEFAULT_BASE  # first host id of the sandboxes' dedicated range (sandbox/ids.py)
    id_range_slices: int = DEFAULT_SLICES  # 65536-id slices in that range: one per function
    subuid_file: Path = SUBUID  # checked at start: the range must not overlap any entry
    subgid_file: Path = SUBGID
    limits: Limits = dataclasses.field(default_factory=Limits)
    sandbox_root: Path | None = None
    snapshot_retention_s: float = 14 * 24 * 3600
    snapshot_init_floor_s: float = 130.0  # snapshot init bound is max(this, Timeout), as on Lambda
    scan_block_on: str | None = None  # publish-time safety scan: findings at/above this severity fail the publish
    snapstart: bool = True  # False: behave as if CRIU were missing (SnapStart versions fail to publish)
    snapstart_runtimes: tuple[str, ...] = AWS_SNAPSTART_RUNTIMES  # runtimes SnapStart is accepted for (AWS's by default)
    reseed_after_restore: bool = False  # True: give random/numpy/OpenSSL fresh entropy after each restore (AWS does not)
    restore_prefetch: bool = True  # read a snapshot's recorded file working set ahead at each restore (snapshot/workingset.py)
    snapshot_init_aslr: bool = True  # False: a publish's init runs without ASLR and glibc's tcache (more dedup; snapshot/determinism.py)
    runc_binary: str = "runc"  # the runc the daemon runs: a name on PATH or a path (`bench blink` gives a CPU-accounting wrapper)
    invoke_timeline: bool = False  # debug: log every invoke's steps with their wall times (snapfaas/timeline.py)
    criu_binary: str = "criu"  # the CRIU SnapStart probes and the criu engine runs: a path, or a name in the system directories
    restore_engine: str = "criu"  # "criu": the daemon drives CRIU itself (sandbox/criu_container.py; cgroup v1 hosts, else runc); "runc": `runc restore`
    restore_memory: str = "map"  # "map": restores map page images copy-on-write (patched CRIU); "copy": CRIU copies them
    restore_loading: str = "lazy"  # "lazy": restore through the snapshot view (FUSE, pages on demand); "eager": materialize first
    sandbox_network: str = "isolated"  # "isolated": a network namespace per environment; "host": share the host's (unsafe; benchmarks)
    snapstart_connections: str = DEFAULT_CONNECTION_MODE  # init's TCP connections in restored copies: "reset" (as on AWS), "closed", "blackhole"
    event_queue_max: int = 100_000  # queued + running Event invocations; beyond it Invoke(Event) answers 429
    event_retry_base_s: float = 1.0  # unit of every async retry delay (Lambda: 1 s; tests shrink it)
    event_lease_s: float = 30.0  # cluster mode: a node's claim of a queued event lapses this long after its last renewal
    tls_cert: Path | None = None  # with tls_key: serve the API over HTTPS
    tls_key: Path | None = None
    replay_cache: bool = False  # refuse a second use of a SigV4 signature within its validity window
    log_max_bytes: int = 16 * 1024 * 1024  # per-function log file size before rotation (one rotated generation is kept)
    snapshot_cache_bytes: int | None = None  # plaintext snapshot RAM cache budget; None: a quarter of MemTotal
    client_header_timeout_s: float = 10.0  # a request head must be complete this long after its first byte
    client_body_timeout_s: float = 20.0  # longest pause between two chunks of a request body
    client_idle_timeout_s: float = 60.0  # an idle keep-alive client connection is closed after this
    store_origin: str | None = None  # snapshot store origin: a directory or s3://bucket/prefix; None: <data-dir>/store
    store_s3_endpoint_url: str | None = None  # a non-AWS S3 service (credentials: boto3's standard chain)
    store_cache_dir: Path | None = None  # the store's local disk cache (sealed chunks); None: <data-dir>/store-cache
    store_cache_bytes: int = 4 << 30  # its byte budget (LRU)
    store_memory_bytes: int = 256 << 20  # the store's plaintext chunk memory tier (beside the view's page cache)
    code_cache_bytes: int = 2 << 30  # this node's cache of code and layer zips (<data-dir>/code; the origin has them all)
    store_secret_file: Path | None = None  # the store's deployment secret; None: <data-dir>/store.secret (cluster nodes share one)
    registry_url: str | None = None  # postgresql://... shared by a cluster's nodes; None: SQLite <data-dir>/state.db, one node
    node_id: str | None = None  # this node's id in the cluster; None: generated once into <data-dir>/node-id
    advertise_url: str | None = None  # where other nodes reach this one; None: scheme://host:port of the API
    lease_ttl_s: float = 30.0  # publish / GC leases (cluster/leases.py) expire this long after their last renewal
    account_concurrency: int | None = None  # cluster-wide account concurrency limit; None: only --max-environments per node
    metrics_token_file: Path | None = None  # bearer token reading /metrics; None: <data-dir>/metrics.token

    @property
    def store_origin_url(self) -> str:
        return self.store_origin if self.store_origin is not None else str(self.data_dir / "store")

    @property
    def store_cache_path(self) -> Path:
        return self.store_cache_dir if self.store_cache_dir is not None else self.data_dir / "store-cache"

    @property
    def metrics_token_path(self) -> Path:
        return self.metrics_token_file if self.metrics_token_file is not None else self.data_dir / "metrics.token"

    @property
    def store_secret_path(self) -> Path:
        """The deployment secret chunk names and keys derive from (0600; every server sharing
        an origin needs the same file)."""
        return self.store_secret_file if self.store_secret_file is not None else store_secret_for(self.data_dir)

    @property
    def clustered(self) -> bool:
        """Several nodes share a PostgreSQL database: membership, heartbeats and forwarding are on."""
        # the schemes of database.POSTGRES_SCHEMES (not imported: it loads SQLAlchemy)
        return self.registry_url is not None and self.registry_url.startswith(
            ("postgresql://", "postgres://", "postgresql+psycopg://"))

    @property
    def node_url(self) -> str:
        """This node's URL as other nodes reach it (`advertise_url`, else the API's own URL; a
        wildcard bind is advertised as loopback, which only suits nodes on one host)."""
        if self.advertise_url is not None:
            return self.advertise_url.rstrip("/")
        return f"{self.scheme}://{self._local_host if self.host in ('0.0.0.0', '::') else self.host}:{self.port}"

    @property
    def store_grace_s(self) -> float:
        """How long garbage collection spares unreferenced manifests and chunks: 0 for a
        directory origin (one server writes it and fences its own publishes exactly); 10
        minutes for S3, which other hosts may be publishing to."""
        return STORE_SHARED_GRACE_S if self.store_origin_url.startswith("s3://") else 0.0

    def snapshot_cache_budget(self, meminfo: Path = Path("/proc/meminfo")) -> int:
        """`snapshot_cache_bytes`, or a quarter of the host's MemTotal when it is not set."""
        if self.snapshot_cache_bytes is not None:
            return self.snapshot_cache_bytes
        return mem_total(meminfo) // 4

    @property
    def sandbox_dir(self) -> Path:
        """Where sandbox-visible derived state lives (rootfs skeleton, runtime, code trees).

        Every ancestor must be traversable by the sandbox's mapped root uid, which a data dir
        under a private home directory is not; so by default this is under /var/lib.
        """
        if self.sandbox_root is not None:
            return self.sandbox_root
        digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:12]
        return Path("/var/lib/snapfaas/sandbox") / digest

    @property
    def interpreter_mirrors(self) -> Path:
        """Where interpreter trees the sandbox's mapped root cannot reach are mirrored: one
        host-wide directory every daemon shares and reuses (`snapfaas.sandbox.mirrors`)."""
        return INTERPRETER_MIRRORS

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def _local_host(self) -> str:
        """The API's address as seen from this host (a wildcard bind is reached on loopback)."""
        return self.host if self.host.startswith("127.") or self.host == "::1" else "127.0.0.1"

    @property
    def id_range(self) -> IdRange:
        """The host ids sandboxes map to; raises ValueError for a range that does not fit."""
        return IdRange(self.id_range_base, self.id_range_slices)

    @property
    def credentials_uri(self) -> str:
        """Where environments fetch credentials: the daemon's listener inside each environment's
        own network namespace (botocore accepts plain HTTP only for loopback addresses). The
        same in every environment, so a snapshot may carry it."""
        return f"{self.function_api_url}{CREDENTIALS_PATH}"

    @property
    def function_api_url(self) -> str:
        """The Lambda API as functions reach it (``AWS_ENDPOINT_URL_LAMBDA``): the same
        in-namespace listener, where environment credentials may invoke what they are granted.
        With ``--sandbox-network host`` functions share the host's network and use the
        operator's port (on loopback: botocore accepts plain HTTP only there)."""
        if self.sandbox_network == "host":
            return f"{self.scheme}://{self._local_host}:{self.port}"
        return f"http://{ENV_SERVICES}"  # plain HTTP on the environment's own loopback, even with --tls-cert

    @property
    def run_dir(self) -> Path:
        """This server's RAM state under /run/snapfaas (root-owned, verified at start)."""
        return run_dir_for(self.sandbox_dir)

    @property
    def network_lock_dir(self) -> Path:
        """Address-block locks, shared by every server on the host (see sandbox/network.py)."""
        return RAM_ROOT / "net"

    @property
    def snapshot_cache(self) -> Path:
        """Plaintext snapshot images: on a tmpfs (RAM), never on persistent disk."""
        return snapshot_cache_for(self.sandbox_dir)

    @property
    def snapshot_view(self) -> Path:
        """Where the snapshot view (snapshot/view.py) is mounted for lazy restores."""
        return snapshot_view_for(self.sandbox_dir)

    @property
    def bundles_dir(self) -> Path:
        return bundles_for(self.sandbox_dir)

    @property
    def uploads_dir(self) -> Path:
        """Request bodies past 256 KiB wait here (unlinked files) until their signature is verified."""
        return self.data_dir / "uploads"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "state.db"

    @property
    def registry_target(self) -> Path | str:
        """The registry database: `registry_url` (PostgreSQL) or the data dir's state.db."""
        return self.registry_url if self.registry_url is not None else self.db_path

    @property
    def events_db(self) -> Path | str:
        """The event queue's database: the cluster's (``registry_url``) or ``<data-dir>/events.db``."""
        return self.registry_url if self.registry_url is not None else self.data_dir / "events.db"

    @property
    def endpoint_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def store_secret_for(data_dir: Path) -> Path:
    """The snapshot store's deployment secret of the server whose data dir is `data_dir`."""
    return data_dir / "store.secret"


def run_dir_for(sandbox_dir: Path) -> Path:
    """RAM state of the server whose sandbox dir is `sandbox_dir`."""
    return RAM_ROOT / sandbox_dir.name


def mem_total(meminfo: Path = Path("/proc/meminfo")) -> int:
    """The host's MemTotal in bytes."""
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no MemTotal in {meminfo}")


def parse_size(text: str) -> int:
    """``16777216``, ``512K``, ``16M``, ``2G`` (binary units) -> bytes; ValueError otherwise."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    raw = text.strip().lower().removesuffix("ib").removesuffix("b")
    scale = units.get(raw[-1:], 1)
    number = raw[:-1] if raw[-1:] in units else raw
    try:
        value = int(float(number) * scale) if number else -1
    except (ValueError, OverflowError):  # not a number, nan, inf
        value = -1
    if value <= 0:
        raise ValueError(f"not a positive size: {text!r} (use e.g. 16M, 2G or a number of bytes)")
    return value


def snapshot_cache_for(sandbox_dir: Path) -> Path:
    """The RAM cache of the server whose sandbox dir is `sandbox_dir` (tools and tests use it)."""
    return run_dir_for(sandbox_dir) / "cache"


def snapshot_view_for(sandbox_dir: Path) -> Path:
    """The snapshot view's mount point of the server whose sandbox dir is `sandbox_dir`."""
    return run_dir_for(sandbox_dir) / "view"


def bundles_for(sandbox_dir: Path) -> Path:
    """The container bundles of the server whose sandbox dir is `sandbox_dir`: on a tmpfs, since
    every environment start writes one (config.json; a private rootfs skeleton for a restore)
    and runc and CRIU log into it; on this kind of disk each of those mkdirs costs ~0.2 ms."""
    return run_dir_for(sandbox_dir) / "bundles"


def parse_runtime_overrides(values: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Parse ``--runtime python3.12=/path/to/python`` values; raise ValueError on bad input."""
    out: dict[str, str] = {}
    for item in values:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise ValueError(f"--runtime expects NAME=PATH, got {item!r}")
        if name not in SUPPORTED_RUNTIMES:
            raise ValueError(f"--runtime: unsupported runtime {name!r} (supported: {', '.join(SUPPORTED_RUNTIMES)})")
        out[name] = path
    return out


def parse_snapstart_runtimes(text: str) -> tuple[str, ...]:
    """``python3.11,python3.12`` -> the runtimes SnapStart is accepted for; ValueError naming an
    unknown one. Names AWS accepts SnapStart for are valid even where this server lacks the runtime."""
    known = dict.fromkeys((*PYTHON_RUNTIMES, *AWS_SNAPSTART_RUNTIMES))  # OS-only runtimes have no SnapStart on AWS
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise ValueError("--snapstart-runtimes: name at least one runtime")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"--snapstart-runtimes: unknown runtime {unknown[0]!r} (known: {', '.join(known)})")
    return names


def credentials_from_env(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The key pair named by SNAPFAAS_ACCESS_KEY_ID / SNAPFAAS_SECRET_ACCESS_KEY, if both are set."""
    akid, secret = environ.get(ACCESS_KEY_ENV), environ.get(SECRET_KEY_ENV)
    if akid and secret:
        return {akid: secret}
    return None
