"""Deterministic SnapStart init: equal code gives (nearly) equal memory, so versions share chunks.

The store deduplicates a snapshot's page images by 512 KiB windows of the address space
(`snapfaas.store.layout`). Two inits of one function only produce equal windows if they lay
memory out the same way. Measured on the reference functions (bench-results/store.md), what
made two inits of *identical* code differ, and what this module does about each:

* **ASLR** moves every mapping (heap, libraries, stacks), so every pointer-bearing page differs
  (0 of ~36,000 torch pages equal). The init environment of a publish runs with the personality
  flag ``ADDR_NO_RANDOMIZE``: runc is started under ``setarch <machine> -R`` (the sandbox's
  seccomp filter refuses that personality inside, and it must be set before the interpreter's
  exec anyway); the process inherits it. The runtime clears the flag again at the restore
  barrier, so programs a restored function executes get ASLR. On-demand environments and
  restores are never started this way. Operator switch: ``--snapshot-init-aslr`` keeps ASLR
  (and the next point) in init too, at the cost of dedup (README, "Security model").
* **glibc's tcache key** (a random per-process value written into every freed small chunk):
  ``GLIBC_TUNABLES=glibc.malloc.tcache_count=0`` in init, so freed chunks go to the fastbins and
  carry no random key. The restored process keeps running without the tcache (its malloc state
  is the snapshot's); its children get the default (the variable is removed from the runtime's
  environment).
* **Hash randomization**: ``PYTHONHASHSEED`` per function, HMAC of the deployment secret and
  the function name (`hash_seed`): stable across versions, different per function and
  deployment, unknown without the secret. Restored clones of one snapshot share their seed
  anyway (it is in the snapshot's memory). A seed the function's configuration sets wins.

The runtime removes the variables it was given for this (`INIT_VARS` lists them) from
``os.environ`` before user code runs; the process's initial environment block
(``/proc/self/environ``) still holds them, as it holds every variable the process started with.

* **glibc's pointer guard** (from the kernel's AT_RANDOM at exec; it mangles every function
  pointer glibc keeps in memory, e.g. the atexit entries torch's C++ libraries register by the
  thousand): with the fixed layout, pid 1 replaces it before it forks the runtime
  (`snapfaas.runtime.pointerguard`) with a value fixed per function, derived like the hash
  seed (`pointer_guard`, variable ``_SNAPFAAS_POINTER_GUARD``). Restored clones of one
  snapshot share their guard anyway (it is in the snapshot's memory).

* **The runtime's pid**: runc's init (Go) takes a varying number of pids for its threads
  before it execs pid 1, so the runtime's pid, CRIU's per-process images and the pid in the
  runtime's memory varied per init. With the fixed layout pid 1 forks children that exit at
  once until the runtime gets pid `FIXED_RUNTIME_PID` (variable ``_SNAPFAAS_RUNTIME_PID``).

* **The stack protector canary** (the rest of AT_RANDOM; every active C frame holds a copy):
  re-keyed with the pointer guard, every copy with it (`stack_canary`, variable
  ``_SNAPFAAS_STACK_CANARY``).

What stays random: the state of RNGs seeded
from the kernel at import (``random``), per-environment credentials in the environment, pids.
Those are scattered pages; the bench measures what is left.

The runtime also imports the handler module's leading import statements before compiling the
handler (`snapfaas.runtime.preimport`), so a code change does not shift the libraries' memory.
"""

from __future__ import annotations

import hashlib
import hmac
import platform
import shutil
from collections.abc import Mapping

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

INIT_VARS = "_SNAPFAAS_INIT_VARS"  # names the runtime removes from its environment at start (and itself)
POINTER_GUARD = "_SNAPFAAS_POINTER_GUARD"  # 16 hex digits: pid 1 re-keys glibc's pointer guard to it (runtime.pointerguard)
RUNTIME_PID = "_SNAPFAAS_RUNTIME_PID"  # pid 1 forks the runtime at this pid (runtime.init.burn_pids_before)
STACK_CANARY = "_SNAPFAAS_STACK_CANARY"  # 16 hex digits: pid 1 re-keys the stack canary to it, with the guard
FIXED_RUNTIME_PID = 16  # past the pids runc's init threads take (3 or 4 here)
NO_TCACHE = "glibc.malloc.tcache_count=0"


def hash_seed(secret: bytes, function: str) -> int:
    """The function's ``PYTHONHASHSEED`` (0..2**32-1): HMAC-SHA256 under an HKDF subkey of the
    deployment `secret`, so it is stable across versions and unguessable without the secret."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"snapfaas snapstart hash seed").derive(secret)
    return int.from_bytes(hmac.new(key, function.encode(), hashlib.sha256).digest()[:4], "big")


def pointer_guard(secret: bytes, function: str) -> int:
    """The function's glibc pointer guard for a deterministic init (64 bits): HMAC-SHA256 under
    its own HKDF subkey of the deployment `secret`, stable across versions."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"snapfaas snapstart pointer guard").derive(secret)
    return int.from_bytes(hmac.new(key, function.encode(), hashlib.sha256).digest()[:8], "big")


def stack_canary(secret: bytes, function: str) -> int:
    """The function's stack protector canary for a deterministic init (64 bits, the low byte
    zero as glibc's): HMAC-SHA256 under its own HKDF subkey of the deployment `secret`."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"snapfaas snapstart stack canary").derive(secret)
    return int.from_bytes(hmac.new(key, function.encode(), hashlib.sha256).digest()[:8], "big") & ~0xFF


def init_environ(seed: int | None, fixed_layout: bool, configured: Mapping[str, str],
                 guard: int | None = None, canary: int | None = None) -> dict[str, str]:
    """Variables for the init environment of a SnapStart publish: the hash seed (if `seed` is
    known), the tcache switch, the runtime's pid, the pointer guard and the stack canary (with
    `fixed_layout`; the canary only with a guard; each if known),
    skipping any the function's configuration sets, plus `INIT_VARS` naming what the runtime
    must remove again."""
    wanted: dict[str, str] = {}
    if seed is not None:
        wanted["PYTHONHASHSEED"] = str(seed)
    if fixed_layout:
        wanted["GLIBC_TUNABLES"] = NO_TCACHE
        wanted[RUNTIME_PID] = str(FIXED_RUNTIME_PID)
        if guard is not None:
            wanted[POINTER_GUARD] = f"{guard:016x}"
            if canary is not None:
                wanted[STACK_CANARY] = f"{canary:016x}"
    added = {name: value for name, value in wanted.items() if name not in configured}
    if added:
        added[INIT_VARS] = ",".join(sorted(added))
    return added


def fixed_layout_launcher() -> list[str] | None:
    """The argv prefix that starts a program (runc, and through it the init process) without
    address space randomization, or None if ``setarch`` (util-linux) is missing."""
    setarch = shutil.which("setarch", path="/usr/bin:/bin:/usr/sbin:/sbin")
    return [setarch, platform.machine(), "--addr-no-randomize"] if setarch else None
