"""The seccomp profile of every execution environment (OCI ``linux.seccomp``).

Class: Docker's / runc's default profile for a container with no capabilities, written as a
*denylist* over a default allow (Docker's is an allowlist): every syscall runs except the ones
below, which fail with ``EPERM`` (``clone3`` with ``ENOSYS``). A denylist keeps every ordinary
syscall a Python function, numpy, torch or a future glibc needs working, including syscalls
newer than the host's libseccomp; what it shuts is the kernel attack surface that an
unprivileged process can still reach and that a Lambda function has no use for.

What is denied, and why:

- **New namespaces** — ``unshare``, ``setns``, ``clone`` with any ``CLONE_NEW*`` flag (one
  masked-argument rule per flag, since a rule can only test ``(arg & mask) == value``), and
  ``clone3`` with ``ENOSYS`` (its flags live in a struct seccomp cannot read; ``ENOSYS`` makes
  glibc fall back to ``clone``, where the flags are checked). An unprivileged user namespace
  hands the function every capability inside it, which opens nf_tables, mount and other
  namespaced-privilege code (most of the kernel's recent local privilege escalations).
- **Mounts** — ``mount``, ``umount``/``umount2``, ``pivot_root``, ``chroot`` and the new mount API
  (``move_mount``, ``open_tree``, ``fsopen``, ``fsmount``, ``fsconfig``, ``fspick``,
  ``mount_setattr``).
- **Kernel keyrings** — ``keyctl``, ``add_key``, ``request_key`` (keys are not namespaced).
- **Large unprivileged attack surfaces** — ``bpf``, ``io_uring_setup``/``enter``/``register``,
  ``userfaultfd`` (a classic race-widening primitive), ``perf_event_open``.
- **Host administration** — ``kexec_load``, ``kexec_file_load``, ``init_module``,
  ``finit_module``, ``delete_module``, ``create_module``, ``get_kernel_syms``, ``query_module``,
  ``acct``, ``swapon``, ``swapoff``, ``reboot``, ``syslog``, ``quotactl``, ``quotactl_fd``,
  ``nfsservctl``, ``_sysctl``, ``sysfs``, ``ustat``, ``vhangup``, ``iopl``, ``ioperm``,
  ``lookup_dcookie``, ``uselib``, ``vm86``, ``vm86old``.
- **Clock** — ``settimeofday``, ``stime``, ``clock_settime``, ``clock_adjtime``, ``adjtimex``
  (the clock is not namespaced).
- **Other processes and file handles** — ``ptrace``, ``process_vm_readv``/``writev``, ``kcmp``,
  ``open_by_handle_at`` (the "shocker" escape), ``name_to_handle_at``.
- **NUMA policy** — ``mbind``, ``set_mempolicy``, ``get_mempolicy``, ``move_pages``,
  ``migrate_pages`` (Docker allows them only with ``CAP_SYS_NICE``; libraries treat ``EPERM``
  as "no NUMA").
- **personality** — every value except the ones Docker allows: ``0`` (``PER_LINUX``), ``0x8``
  (``PER_LINUX32``), ``0x20000`` (``UNAME26``), ``0x20008`` and ``0xffffffff`` (query).
  Expressed exactly with masked-equality rules (see `personality_rules`).

Architectures: the host's native ABI and its compat ABIs (x86_64 → x86_64, x86, x32;
aarch64 → aarch64, arm), so a 32-bit syscall entry cannot bypass a rule.

Syscall names unknown to the host's libseccomp are skipped by runc (it logs and goes on), so
listing a new one is harmless on an older host.

Checkpoint/restore: CRIU dumps the filter (``PTRACE_SECCOMP_GET_FILTER``) and suspends it
while its parasite code runs in the dumped task (``PTRACE_O_SUSPEND_SECCOMP``), and a restore
installs it last, after the restorer's own syscalls; so a SnapStart environment keeps this
filter (``Seccomp: 2`` in its ``/proc/self/status``), tested end to end.
"""

from __future__ import annotations

import errno
import platform
from typing import Any

ACT_ERRNO = "SCMP_ACT_ERRNO"
ARCHITECTURES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}

# clone(2)'s flags word (argument 0 on x86 and arm): CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS,
# CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET (Docker's mask 0x7E020000).
# CLONE_NEWTIME (0x80) exists only for unshare/clone3: in clone's word that bit is the exit signal.
CLONE_NEW_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)

DENIED = (
    # namespaces
    "unshare", "setns",
    # mounts
    "mount", "umount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsmount",
    "fsconfig", "fspick", "mount_setattr",
    # keyrings
    "keyctl", "add_key", "request_key",
    # large attack surfaces
    "bpf", "io_uring_setup", "io_uring_enter", "io_uring_register", "userfaultfd", "perf_event_open",
    # host administration
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "create_module",
    "get_kernel_syms", "query_module", "acct", "swapon", "swapoff", "reboot", "syslog", "quotactl",
    "quotactl_fd", "nfsservctl", "_sysctl", "sysfs", "ustat", "vhangup", "iopl", "ioperm", "lookup_dcookie",
    "uselib", "vm86", "vm86old",
    # clock
    "settimeofday", "stime", "clock_settime", "clock_adjtime", "adjtimex",
    # other processes, file handles
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "open_by_handle_at", "name_to_handle_at",
    # NUMA policy
    "mbind", "set_mempolicy", "get_mempolicy", "move_pages", "migrate_pages",
)
ENOSYS_DENIED = ("clone3",)

PERSONALITY_ALLOWED = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
_PERSONALITY_KEPT_BITS = 0x8 | 0x20000  # bits an allowed value may set alone


def personality_rules() -> list[tuple[int, int]]:
    """(mask, value) pairs: personality(x) is denied iff ``x & mask == value`` for one of them.

    Exactly Docker's allowlist `PERSONALITY_ALLOWED`, within the 32 bits the kernel reads
    (``personality`` takes an ``unsigned int``; no mask reaches above bit 31, so upper-half
    garbage in the register changes nothing). Let S be the 30 bits other than 0x8 and 0x20000.
    An allowed value has S all clear (0, 0x8, 0x20000, 0x20008) or is all ones. So deny:
    (1) S neither all clear nor all set: then some cyclically adjacent pair of S's bits reads
    set-then-clear, one rule per pair; (2) S all set but 0x8 or 0x20000 clear: two rules.
    """
    s_bits = [1 << i for i in range(32) if not (1 << i) & _PERSONALITY_KEPT_BITS]
    s_mask = sum(s_bits)
    rules = [(bit | s_bits[(i + 1) % len(s_bits)], bit) for i, bit in enumerate(s_bits)]
    rules += [(s_mask | kept, s_mask) for kept in (0x8, 0x20000)]
    return rules


def personality_denied(value: int) -> bool:
    """Whether the profile denies personality(value) (for tests and documentation)."""
    return any(value & mask == expected for mask, expected in personality_rules())


def architectures(machine: str | None = None) -> list[str]:
    """libseccomp architecture names for `machine` (default: this host); [] if unknown (the
    filter then covers the native ABI only, which runc adds by itself)."""
    return list(ARCHITECTURES.get(machine or platform.machine(), []))


def _rule(names: list[str] | tuple[str, ...], errno_ret: int, args: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"names": list(names), "action": ACT_ERRNO, "errnoRet": errno_ret}
    if args:
        rule["args"] = args
    return rule


def profile(machine: str | None = None) -> dict[str, Any]:
    """The OCI ``linux.seccomp`` object (runc, libseccomp ≥ 2.5)."""
    rules = [_rule(DENIED, errno.EPERM), _rule(ENOSYS_DENIED, errno.ENOSYS)]
    # one rule per flag: conditions within one rule are ANDed, separate rules are ORed
    rules += [_rule(["clone"], errno.EPERM, [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}])
              for flag in CLONE_NEW_FLAGS]
    rules += [_rule(["personality"], errno.EPERM, [{"index": 0, "value": mask, "valueTwo": value, "op": "SCMP_CMP_MASKED_EQ"}])
              for mask, value in personality_rules()]
    return {"defaultAction": "SCMP_ACT_ALLOW", "architectures": architectures(machine), "syscalls": rules}
