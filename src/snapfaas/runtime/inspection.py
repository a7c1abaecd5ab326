"""Fingerprints of what restored copies of one snapshot should not share (``snapfaas snapstart verify``).

The worker sends ``inspect`` to an environment it created only for verification (never one that
serves invokes); the runtime answers ``inspection`` with `fingerprint()`: a JSON object of
``name -> {"kind", "category", "digest"}``. Only digests leave the environment (SHA-256 of a
value's repr, truncated), never the values: a credential captured at init is compared, not shown.

Categories (the daemon's comparison depends on them, `snapfaas.snapshot.uniqueness`):

- ``state``: generator states that must differ between restored copies for their next outputs to
  differ: Python's global ``random`` and numpy's legacy global RNG when the function's modules
  draw from them (`referenced_generators`), every numpy ``Generator`` / ``RandomState`` held
  in a module global, 32 bytes drawn from the interpreter's OpenSSL (``ssl.RAND_bytes``) and
  from ``cryptography``'s own OpenSSL (an X25519 key). Identical in every restored copy: a
  finding. Each is only looked at when the function already loaded the module: inspecting
  imports nothing new (numpy 2 imports ``numpy.random`` lazily too).
- ``value``: scalar module globals of the function's own modules (the files under the task
  root: numbers, strings, bytes, UUIDs, dates, and one level into tuples, lists, dicts and
  plain instances of the function's classes), labelled ``uuid``, ``timestamp``, ``credential``
  or ``value``, plus the credentials of module-level boto3 clients. Identical values are
  findings only if they differed between two independent on-demand inits (a constant is
  identical everywhere and is not a finding): that is the daemon's call.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import sys
import uuid
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from .bootstrap import OPENSSL_MODULES

DIGEST_CHARS = 24
MAX_ITEMS = 64  # a container global is fingerprinted whole only up to this many items
SCALARS = (int, float, str, bytes, bool, uuid.UUID, datetime.datetime, datetime.date, datetime.time)
CREDENTIAL_WORDS = ("secret", "token", "password", "credential", "access_key", "accesskey")
EPOCH_SECONDS = (1e9, 4.1e9)  # 2001 .. 2099


def digest(value: Any) -> str:
    """A short SHA-256 of the value (of its bytes for str/bytes, however long; else of its repr)."""
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        raw = value.encode(errors="replace")
    else:
        raw = repr(value).encode(errors="replace")
    return hashlib.sha256(raw).hexdigest()[:DIGEST_CHARS]


def user_modules(task_root: str) -> Iterator[tuple[str, ModuleType]]:
    """The function's own modules: loaded from files under `task_root` (dependencies vendored
    into the package count as its code too)."""
    root = os.path.realpath(task_root) + os.sep
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and os.path.realpath(path).startswith(root):
            yield name, module


def label(name: str, value: Any) -> str:
    """What a scalar global most likely is, for the report."""
    if isinstance(value, uuid.UUID):
        return "uuid"
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return "timestamp"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for scale in (1, 1e3, 1e6, 1e9):  # seconds, ms, us, ns since the epoch
            if EPOCH_SECONDS[0] * scale <= value <= EPOCH_SECONDS[1] * scale:
                return "timestamp"
    lowered = name.lower()
    if isinstance(value, (str, bytes)) and any(word in lowered for word in CREDENTIAL_WORDS):
        return "credential"
    if isinstance(value, str) and _looks_like_uuid(value):
        return "uuid"
    return "value"


def _looks_like_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return len(text) in (32, 36)


def _fingerprintable(value: Any) -> bool:
    if isinstance(value, SCALARS):
        return True
    if isinstance(value, (tuple, list, frozenset)) and len(value) <= MAX_ITEMS:
        return all(isinstance(v, SCALARS) for v in value)
    if isinstance(value, dict) and len(value) <= MAX_ITEMS:
        return all(isinstance(k, SCALARS) and isinstance(v, SCALARS) for k, v in value.items())
    return False


def _scalar_label(name: str, value: Any) -> str:
    if isinstance(value, SCALARS):
        return label(name, value)
    items = list(value.values()) if isinstance(value, dict) else list(value)
    labels = {label(name, v) for v in items}
    return next((k for k in ("credential", "uuid", "timestamp") if k in labels), "value")


def _rng_states(qualified: str, value: Any, numpy_random: ModuleType | None) -> Iterator[tuple[str, dict[str, str]]]:
    """numpy generators held in globals (only when numpy.random is loaded)."""
    if numpy_random is None:
        return
    generator = getattr(numpy_random, "Generator", None)
    random_state = getattr(numpy_random, "RandomState", None)
    if generator is not None and isinstance(value, generator):
        yield qualified, {"kind": "numpy-generator", "category": "state", "digest": digest(value.bit_generator.state)}
    elif random_state is not None and isinstance(value, random_state):
        yield qualified, {"kind": "numpy-random-state", "category": "state", "digest": digest(value.get_state(legacy=False))}


def _client_credentials(value: Any) -> str | None:
    """The access key id of a boto3/botocore client's frozen credentials, if it is one."""
    signer = getattr(value, "_request_signer", None)
    creds = getattr(signer, "_credentials", None) if signer is not None else None
    if creds is None or type(value).__module__ != "botocore.client":
        return None
    try:
        frozen = creds.get_frozen_credentials()
    except Exception as exc:  # noqa: BLE001 - a refresh may fail (no network): nothing to compare, say so
        print(f"[snapfaas verify] credentials of a module-level client unreadable: {exc}", file=sys.stderr)
        return None
    return f"{frozen.access_key}:{frozen.token}"


def module_values(task_root: str) -> dict[str, dict[str, str]]:
    """Fingerprints of the function's module globals (see the module docstring)."""
    out: dict[str, dict[str, str]] = {}
    numpy_random = sys.modules.get("numpy.random")
    modules = dict(user_modules(task_root))
    for module_name, module in modules.items():
        for attr, value in list(vars(module).items()):
            if attr.startswith("__") or isinstance(value, ModuleType):
                continue
            qualified = f"{module_name}.{attr}"
            if _fingerprintable(value):
                out[qualified] = {"kind": _scalar_label(attr, value), "category": "value", "digest": digest(value)}
                continue
            out.update(_rng_states(qualified, value, numpy_random))
            access = _client_credentials(value)
            if access is not None:
                out[qualified] = {"kind": "credential", "category": "value", "digest": digest(access)}
                continue
            if getattr(type(value), "__module__", None) in modules:  # an instance of the function's own class
                for field, inner in list(getattr(value, "__dict__", {}).items()):
                    if _fingerprintable(inner):
                        out[f"{qualified}.{field}"] = {"kind": _scalar_label(field, inner), "category": "value",
                                                       "digest": digest(inner)}
                    else:
                        out.update(_rng_states(f"{qualified}.{field}", inner, numpy_random))
    return out


def referenced_generators(task_root: str) -> set[str]:
    """Which global generators the function's own modules can draw from: ``random`` (the
    module, or a function bound to its global instance, as ``from random import choice``
    gives) and ``numpy.random`` (numpy or numpy.random, or a function bound to numpy's legacy
    global RandomState)."""
    random_module, numpy_random = sys.modules.get("random"), sys.modules.get("numpy.random")
    global_random = getattr(random_module, "_inst", None)
    global_numpy = getattr(getattr(numpy_random, "mtrand", None), "_rand", None)
    used: set[str] = set()
    for _, module in user_modules(task_root):
        for value in list(vars(module).values()):
            if isinstance(value, ModuleType):
                name = value.__name__
                if name == "random":
                    used.add("random")
                elif name == "numpy" or name.startswith("numpy.random"):
                    used.add("numpy.random")
                continue
            owner = getattr(value, "__self__", None)
            if owner is not None and owner is global_random:
                used.add("random")
            elif owner is not None and owner is global_numpy:
                used.add("numpy.random")
    return used


def generator_states(loaded: frozenset[str], used: set[str]) -> dict[str, dict[str, str]]:
    """The global generators' states and fresh OpenSSL output (see the module docstring), of
    the modules in `loaded` (those the function had loaded before the inspection began). The
    global ``random`` and numpy states only if the function's code draws from them (`used`):
    the standard library loads ``random`` for its own purposes (``uuid`` on 3.11, ``tempfile``)."""
    out: dict[str, dict[str, str]] = {}
    random_module = sys.modules.get("random") if "random" in loaded and "random" in used else None
    if random_module is not None:
        out["random (global state)"] = {"kind": "random-state", "category": "state", "digest": digest(random_module.getstate())}
    numpy_random = sys.modules.get("numpy.random") if "numpy.random" in loaded and "numpy.random" in used else None
    if numpy_random is not None and hasattr(numpy_random, "get_state"):
        out["numpy.random (legacy global state)"] = {"kind": "numpy-random-state", "category": "state",
                                                     "digest": digest(numpy_random.get_state(legacy=False))}
    if any(name in loaded for name in OPENSSL_MODULES):
        import ssl

        out["OpenSSL (ssl.RAND_bytes)"] = {"kind": "openssl", "category": "state", "digest": digest(ssl.RAND_bytes(32))}
    if "cryptography.hazmat.bindings._rust" in loaded:
        try:
            from cryptography.hazmat.primitives.asymmetric import x25519

            key = x25519.X25519PrivateKey.generate().private_bytes_raw()
        except Exception as exc:  # noqa: BLE001 - an old or partial cryptography: nothing to draw from, say so
            print(f"[snapfaas verify] cryptography's OpenSSL not sampled: {exc}", file=sys.stderr)
            key = None
        if key is not None:
            out["cryptography's OpenSSL (X25519 key)"] = {"kind": "openssl", "category": "state", "digest": digest(key)}
    return out


def fingerprint(task_root: str, loaded: frozenset[str]) -> dict[str, dict[str, str]]:
    """Everything `inspect` reports, keyed by a name for the report. `loaded`: the names in
    ``sys.modules`` before this module was imported (importing it loads hashlib's OpenSSL)."""
    return {**module_values(task_root), **generator_states(loaded, referenced_generators(task_root))}
