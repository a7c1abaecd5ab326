"""The snapshot-safety rule table: what each rule flags, why it breaks under SnapStart, the fix.

Everything the analyzer matches is data here: fully qualified call names (as `resolver`
produces them, e.g. ``numpy.random.default_rng`` or ``boto3.Session().get_credentials``),
glob patterns over them, and per-rule "families" (name prefixes that count as calling the
rule's API when an after-restore hook is examined). docs/scan-rules.md documents the same
table; a unit test keeps the two in step.
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
from collections.abc import Iterable


class Severity(enum.IntEnum):
    INFO = 1
    WARNING = 2
    ERROR = 3

    def __str__(self) -> str:
        return self.name.lower()

    @property
    def sarif_level(self) -> str:
        return {Severity.INFO: "note", Severity.WARNING: "warning", Severity.ERROR: "error"}[self]

    @classmethod
    def parse(cls, text: str | Severity) -> Severity:
        if isinstance(text, Severity):
            return text
        try:
            return cls[str(text).strip().upper()]
        except KeyError:
            raise ValueError(f"unknown severity {text!r} (use error, warning or info)") from None


def threshold(text: str | Severity | None) -> Severity | None:
    """``--fail-on``/``--block-on`` values: a severity, or None for never/none/off/empty."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "never", "none", "off")):
        return None
    return Severity.parse(text)


class ApiSet:
    """Fully qualified call names: exact names plus glob patterns.

    A pattern without ``()`` only matches names without ``()``: ``random.*`` matches
    ``random.randint`` but not ``random.Random().random`` (a method of an instance).
    """

    def __init__(self, names: Iterable[str] = (), patterns: Iterable[str] = (), exclude: Iterable[str] = ()) -> None:
        self.names = frozenset(names)
        self.patterns = tuple(patterns)
        self.exclude = frozenset(exclude)

    def __contains__(self, qualname: object) -> bool:
        if not isinstance(qualname, str) or qualname in self.exclude:
            return False
        if qualname in self.names:
            return True
        chained = "()" in qualname
        for pattern in self.patterns:
            if chained and "()" not in pattern:
                continue
            if fnmatch.fnmatchcase(qualname, pattern):
                return True
        return False


@dataclasses.dataclass(frozen=True)
class Rule:
    id: str
    name: str  # kebab-case slug (SARIF rule name)
    severity: Severity  # default; a finding can be downgraded by an after-restore hook
    title: str  # one line
    why: str  # why it breaks under snapshots
    fix: str  # what to do instead
    bad: str  # example that is flagged
    good: str  # the fixed example, not flagged
    family: tuple[str, ...] = ()  # name prefixes: a hook calling one of these re-creates this rule's state
    # True: the call produces a value that is only a problem if it is kept (stored in a module-level
    # name, a class, an object reachable from one); values used and dropped during init are not
    # reported. False: the call changes process state by itself (starts a thread, seeds the
    # global RNG, may cache a fetched secret inside a library).
    needs_state: bool = True

    def in_family(self, qualname: str) -> bool:
        return any(qualname == p.rstrip(".") or qualname.startswith(p if p.endswith(".") else p + ".")
                   or qualname.startswith(p + "(") for p in self.family)


# -- API catalogs ---------------------------------------------------------------------------

UNIQUE_IDS = ApiSet(
    names=["uuid.uuid1", "uuid.uuid4", "os.urandom", "os.getrandom"],
    patterns=["secrets.*", "random.SystemRandom().*"],
    exclude=["secrets.compare_digest", "secrets.SystemRandom"],
)

RANDOM = ApiSet(
    patterns=["random.*", "numpy.random.*"],
    exclude=["random.seed", "random.getstate", "random.setstate", "random.SystemRandom",
             "numpy.random.seed", "numpy.random.get_state", "numpy.random.set_state",
             "numpy.random.Generator", "numpy.random.BitGenerator"],
)

# Calls that seed a generator: name -> keyword names the seed may be passed as.
SEEDERS: dict[str, tuple[str, ...]] = {
    "random.seed": ("a",),
    "random.Random": ("x",),
    "numpy.random.seed": ("seed",),
    "numpy.random.default_rng": ("seed",),
    "numpy.random.RandomState": ("seed",),
    "numpy.random.SeedSequence": ("entropy",),
    "numpy.random.PCG64": ("seed",),
    "numpy.random.PCG64DXSM": ("seed",),
    "numpy.random.MT19937": ("seed",),
    "numpy.random.Philox": ("seed",),
    "numpy.random.SFC64": ("seed",),
    "torch.manual_seed": ("seed",),
    "torch.cuda.manual_seed": ("seed",),
    "torch.cuda.manual_seed_all": ("seed",),
    "tensorflow.random.set_seed": ("seed",),
}

TIME = ApiSet(names=[
    "time.time", "time.time_ns", "time.monotonic", "time.monotonic_ns", "time.perf_counter",
    "time.perf_counter_ns", "datetime.datetime.now", "datetime.datetime.utcnow", "datetime.datetime.today",
    "datetime.date.today",
])

NETWORK = ApiSet(names=[
    "socket.socket", "socket.create_connection",
    "http.client.HTTPConnection", "http.client.HTTPSConnection",
    "requests.Session", "requests.session", "requests.sessions.Session",
    "urllib3.PoolManager", "urllib3.ProxyManager", "urllib3.HTTPConnectionPool", "urllib3.HTTPSConnectionPool",
    "urllib3.connection_from_url", "urllib3.poolmanager.PoolManager",
    "httpx.Client", "httpx.AsyncClient", "aiohttp.ClientSession",
    "psycopg.connect", "psycopg.Connection.connect", "psycopg2.connect", "psycopg_pool.ConnectionPool",
    "psycopg2.pool.SimpleConnectionPool", "psycopg2.pool.ThreadedConnectionPool",
    "pymysql.connect", "pymysql.Connect", "pymysql.connections.Connection", "MySQLdb.connect",
    "mysql.connector.connect", "sqlite3.connect", "sqlalchemy.create_engine",
    "redis.Redis", "redis.StrictRedis", "redis.from_url", "redis.Redis.from_url", "redis.ConnectionPool",
    "redis.client.Redis", "redis.cluster.RedisCluster", "redis.RedisCluster",
    "pymongo.MongoClient", "pymongo.mongo_client.MongoClient",
    "ftplib.FTP", "smtplib.SMTP", "smtplib.SMTP_SSL", "pika.BlockingConnection",
    "grpc.insecure_channel", "grpc.secure_channel", "elasticsearch.Elasticsearch",
    "kafka.KafkaProducer", "kafka.KafkaConsumer",
])

AWS_CLIENTS = ApiSet(names=[
    "boto3.client", "boto3.resource", "boto3.Session().client", "boto3.Session().resource",
    "boto3.session.Session().client", "boto3.session.Session().resource",
    "botocore.session.get_session().create_client", "botocore.session.Session().create_client",
])

# Methods on anything derived from boto3/botocore that fetch credentials or tokens.
CREDENTIAL_METHODS = frozenset({
    "get_credentials", "get_frozen_credentials", "assume_role", "assume_role_with_saml",
    "assume_role_with_web_identity", "get_session_token", "get_federation_token",
})
CREDENTIAL_ENV = frozenset({
    "AWS_SESSION_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECURITY_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
})
ENV_READERS = frozenset({"os.environ.get", "os.getenv", "os.environ.setdefault", "os.environ.pop",
                         "os.environ.__getitem__", "os.getenvb"})
ENV_MAPPINGS = frozenset({"os.environ", "os.environb"})

# SNAP007: a called function's name suggests it fetches a secret: it has a secret noun and a
# fetching verb (get_api_token, fetchSecret, load_credentials), or is just a qualified noun
# (access_token, client_secret). Names are split into words at "_" and camelCase boundaries.
SECRET_NOUNS = frozenset({"token", "tokens", "credential", "credentials", "cred", "creds", "secret", "secrets",
                          "password"})
FETCH_VERBS = frozenset({"get", "fetch", "load", "read", "retrieve", "request", "refresh", "obtain", "acquire",
                         "issue", "generate", "mint", "assume", "resolve", "lookup", "login", "authenticate",
                         "sign", "exchange", "download", "pull", "rotate", "renew"})
SECRET_NAME_PREFIXES_SKIPPED = ("set", "is", "has", "validate", "verify", "check", "register", "parse", "revoke",
                                "delete", "clear", "invalidate")
SECRET_MODULES_SKIPPED = ("secrets.", "tokenize.", "token.")


def name_words(name: str) -> list[str]:
    words: list[str] = []
    for part in name.split("_"):
        start = 0
        for i in range(1, len(part)):
            if part[i].isupper() and not part[i - 1].isupper():
                words.append(part[start:i].lower())
                start = i
        if part[start:]:
            words.append(part[start:].lower())
    return words


def looks_like_secret_fetch(qualname: str) -> bool:
    """Whether the last component of a called name reads like fetching a token/credential/secret."""
    if qualname.startswith(SECRET_MODULES_SKIPPED):
        return False
    name = qualname.rsplit(".", 1)[-1].removesuffix("()").lstrip("_")
    if not name or not name[0].islower():
        return False  # CamelCase: a class (TokenBucket), not a fetch
    words = name_words(name)
    if not words or words[0] in SECRET_NAME_PREFIXES_SKIPPED or not SECRET_NOUNS.intersection(words):
        return False
    return bool(FETCH_VERBS.intersection(words)) or (words[-1] in SECRET_NOUNS and len(words) <= 2)


BACKGROUND = ApiSet(names=[
    "threading.Thread", "threading.Timer",
    "_thread.start_new_thread", "_thread.start_new",
    "concurrent.futures.ThreadPoolExecutor", "concurrent.futures.ProcessPoolExecutor",
    "concurrent.futures.thread.ThreadPoolExecutor", "concurrent.futures.process.ProcessPoolExecutor",
    "multiprocessing.Process", "multiprocessing.Pool", "multiprocessing.pool.Pool",
    "multiprocessing.pool.ThreadPool", "multiprocessing.dummy.Pool",
    "multiprocessing.get_context().Process", "multiprocessing.get_context().Pool",
    "subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn", "os.posix_spawnp",
    "os.spawnl", "os.spawnle", "os.spawnlp", "os.spawnlpe", "os.spawnv", "os.spawnve", "os.spawnvp", "os.spawnvpe",
])
# Calls that shuffle their first argument in place: the argument is where the state goes.
IN_PLACE = frozenset({"random.shuffle", "numpy.random.shuffle"})

# Local classes deriving from these count as starting background work when instantiated.
BACKGROUND_BASES = frozenset({"threading.Thread", "threading.Timer", "multiprocessing.Process"})

AFTER_RESTORE = frozenset({"snapshot_restore_py.register_after_restore"})
HOOK_REGISTRAR_NAME = "register_after_restore"


# -- the rules ------------------------------------------------------------------------------

HOOK_FIX = "or re-create the state in a `snapshot_restore_py.register_after_restore` hook"

RULES: tuple[Rule, ...] = (
    Rule(
        "SNAP001", "unique-id-at-init", Severity.ERROR,
        "Unique id or secret bytes generated at init",
        "The value is generated once, before the snapshot, and every environment restored from the "
        "snapshot carries the same bytes: ids collide, nonces and keys repeat across environments.",
        f"Generate the value in the handler (per invoke), {HOOK_FIX}.",
        bad='import uuid\n\nINSTANCE_ID = str(uuid.uuid4())\n\n\ndef handler(event, context):\n    return {"id": INSTANCE_ID}\n',
        good='import uuid\n\n\ndef handler(event, context):\n    return {"id": str(uuid.uuid4())}\n',
        family=("uuid", "secrets", "os.urandom", "os.getrandom", "random.SystemRandom"),
    ),
    Rule(
        "SNAP002", "random-at-init", Severity.WARNING,
        "Pseudo-random values or generators created at init",
        "Values drawn at init are identical in every restored environment; a generator object created at "
        "init (random.Random(), numpy default_rng()) resumes from the same internal state everywhere, so "
        "all environments produce the same 'random' sequence. Like AWS, snapfaas reseeds nothing after "
        "restore by default (`snapfaas serve --reseed-after-restore` reseeds the global random and numpy.random "
        "generators only).",
        "Draw values and create generators in the handler, or re-create (or reseed from os.urandom) the generator "
        "in a `snapshot_restore_py.register_after_restore` hook.",
        bad='import random\n\nrng = random.Random()\nJITTER = random.uniform(0, 1)\n\n\ndef handler(event, context):\n    return rng.random() + JITTER\n',
        good='import random\n\n_rng = random.SystemRandom()\n\n\ndef handler(event, context):\n    return _rng.random() + _rng.uniform(0, 1)\n',
        family=("random", "numpy.random"),
    ),
    Rule(
        "SNAP003", "time-at-init", Severity.WARNING,
        "Current time captured at init",
        "The timestamp is the snapshot's creation time, not the environment's start time; restored "
        "environments can run days later, so ages, expiry checks and 'started at' values are wrong. "
        "Monotonic clocks are not comparable across the snapshot either.",
        f"Read the clock in the handler, {HOOK_FIX}.",
        bad='import time\n\nSTARTED = time.time()\n\n\ndef handler(event, context):\n    return {"uptime": time.time() - STARTED}\n',
        good='import time\n\nSTARTED = None\n\n\ndef handler(event, context):\n    global STARTED\n    STARTED = STARTED or time.time()\n    return {"uptime": time.time() - STARTED}\n',
        family=("time", "datetime"),
    ),
    Rule(
        "SNAP004", "connection-at-init", Severity.ERROR,
        "Network connection or connection pool opened at init",
        "TCP connections cannot survive a snapshot (UDP and listening sockets do): a restored environment "
        "holds a connection its peer forgot long ago, reset on first use as on AWS (snapfaas: "
        "--snapstart-connections). The peer also sees one connection shared by many environments. A client "
        "that does not reconnect fails on first use.",
        f"Connect lazily in the handler (and reuse across invokes), {HOOK_FIX}.",
        bad='import psycopg\n\nconn = psycopg.connect("dbname=app")\n\n\ndef handler(event, context):\n    return conn.execute("select 1").fetchone()[0]\n',
        good='import psycopg\nimport snapshot_restore_py\n\nconn = psycopg.connect("dbname=app")\n\n\n@snapshot_restore_py.register_after_restore\ndef reconnect():\n    global conn\n    conn = psycopg.connect("dbname=app")\n\n\ndef handler(event, context):\n    return conn.execute("select 1").fetchone()[0]\n',
        family=("socket", "http.client", "requests", "urllib3", "httpx", "aiohttp", "psycopg", "psycopg2",
                "psycopg_pool", "pymysql", "MySQLdb", "mysql.connector", "sqlite3", "sqlalchemy", "redis",
                "pymongo", "ftplib", "smtplib", "pika", "grpc", "elasticsearch", "kafka"),
    ),
    Rule(
        "SNAP005", "aws-client-at-init", Severity.INFO,
        "AWS SDK client or resource created at init",
        "Creating boto3 clients at init is the recommended SnapStart pattern and is safe because botocore "
        "re-opens pooled connections that the snapshot closed. It is reported for review: credentials the "
        "client resolved explicitly at init, or a custom transport that does not reconnect, are not safe.",
        "Usually keep it (default credential chain, the SDK reconnects); create the client in the handler, "
        f"{HOOK_FIX}, if it was given explicit credentials or a transport that does not reconnect.",
        bad='import boto3\n\ns3 = boto3.client("s3")\n\n\ndef handler(event, context):\n    return s3.list_buckets()["Buckets"]\n',
        good='import boto3\n\n\ndef handler(event, context):\n    s3 = boto3.client("s3")\n    return s3.list_buckets()["Buckets"]\n',
        family=("boto3", "botocore"),
    ),
    Rule(
        "SNAP006", "credentials-at-init", Severity.ERROR,
        "Credentials or tokens fetched into state at init",
        "Credentials resolved at init are the snapshot environment's: snapfaas revokes them right after the "
        "snapshot and gives each restored environment fresh ones (in os.environ and the container "
        "credentials endpoint). Frozen keys, STS tokens and AWS_* variables read at init are stale or "
        "invalid after restore.",
        f"Resolve credentials when they are needed (let boto3 use its default chain), {HOOK_FIX}.",
        bad='import boto3\n\nCREDS = boto3.Session().get_credentials().get_frozen_credentials()\n\n\ndef handler(event, context):\n    return CREDS.access_key\n',
        good='import boto3\n\n\ndef handler(event, context):\n    return boto3.Session().get_credentials().get_frozen_credentials().access_key\n',
        family=("boto3", "botocore", "os.environ", "os.getenv"),
    ),
    Rule(
        "SNAP007", "secret-fetch-at-init", Severity.WARNING,
        "A function that looks like it fetches a token, credential or secret is called at init",
        "Tokens and secrets fetched during init are frozen into the snapshot: every restored environment "
        "reuses the same (possibly short-lived, possibly revoked) value, and rotation is never seen.",
        f"Fetch it in the handler with your own cache expiry, {HOOK_FIX}.",
        bad='from auth import fetch_api_token\n\nTOKEN = fetch_api_token()\n\n\ndef handler(event, context):\n    return call_api(TOKEN)\n',
        good='from auth import fetch_api_token\n\n\ndef handler(event, context):\n    return call_api(fetch_api_token())\n',
        family=(),
        needs_state=False,
    ),
    Rule(
        "SNAP008", "background-work-at-init", Severity.WARNING,
        "Thread, executor or subprocess started at import",
        "Threads and child processes started during init are frozen mid-flight and resumed in every "
        "restored environment: timers fire late and all at once, worker pools share state captured at "
        "snapshot time, and a child process is duplicated (or missing its peer) after restore.",
        "Start background work lazily from the handler or in a `snapshot_restore_py.register_after_restore` "
        "hook; run one-shot commands with subprocess.run, which finishes before the snapshot.",
        bad='import threading\n\n\ndef refresh():\n    ...\n\n\nthreading.Thread(target=refresh, daemon=True).start()\n\n\ndef handler(event, context):\n    return "ok"\n',
        good='import threading\n\n_worker = None\n\n\ndef refresh():\n    ...\n\n\ndef handler(event, context):\n    global _worker\n    if _worker is None:\n        _worker = threading.Thread(target=refresh, daemon=True)\n        _worker.start()\n    return "ok"\n',
        family=("threading", "_thread", "concurrent.futures", "multiprocessing", "subprocess", "os.fork",
                "os.posix_spawn", "os.spawn"),
        needs_state=False,
    ),
    Rule(
        "SNAP009", "constant-seed-at-init", Severity.WARNING,
        "RNG seeded with a constant or the current time at init",
        "Every restored environment starts from the same seeded state, so they all draw the same sequence "
        "(a time seed is the snapshot's time, i.e. a constant too). Under `snapfaas serve --reseed-after-restore` "
        "the global random and numpy.random generators are reseeded after restore, which silently discards a "
        "deliberate seed.",
        "Leave the global generators unseeded (or seed from os.urandom); for reproducible draws seed a local "
        "random.Random(seed) in the handler, or reseed in a `snapshot_restore_py.register_after_restore` hook.",
        bad='import random\n\nrandom.seed(42)\n\n\ndef handler(event, context):\n    return random.random()\n',
        good='import random\n\n\ndef handler(event, context):\n    return random.Random(event.get("seed")).random()\n',
        family=("random", "numpy.random", "torch", "tensorflow"),
        needs_state=False,
    ),
)

PARSE_ERROR = Rule(
    "SNAP000", "parse-error", Severity.INFO,
    "File could not be analyzed",
    "The file is not valid Python for this interpreter (or could not be read), so it was not checked.",
    "Fix the syntax error or encoding, or exclude the file from the package.",
    bad="def broken(:\n    pass\n", good="def fixed():\n    pass\n", needs_state=False,
)

BY_ID: dict[str, Rule] = {rule.id: rule for rule in (*RULES, PARSE_ERROR)}


def rule(rule_id: str) -> Rule:
    return BY_ID[rule_id]
