"""The seccomp profile (snapfaas.sandbox.seccomp): shape, coverage, exact personality rules."""

from __future__ import annotations

import errno
import random

import pytest

from snapfaas.sandbox import seccomp


def rules_for(profile: dict, name: str) -> list[dict]:
    return [rule for rule in profile["syscalls"] if name in rule["names"]]


def test_default_allow_with_errno_rules() -> None:
    profile = seccomp.profile("x86_64")
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    assert {rule["action"] for rule in profile["syscalls"]} == {"SCMP_ACT_ERRNO"}
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert seccomp.profile("aarch64")["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert seccomp.profile("riscv64")["architectures"] == []


@pytest.mark.parametrize("name", [
    "unshare", "setns", "mount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsmount", "fsconfig",
    "fspick", "mount_setattr", "keyctl", "add_key", "request_key", "bpf", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "userfaultfd", "perf_event_open", "kexec_load", "kexec_file_load", "init_module",
    "finit_module", "delete_module", "acct", "swapon", "swapoff", "reboot", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "syslog", "quotactl", "open_by_handle_at", "name_to_handle_at", "lookup_dcookie",
    "ptrace", "process_vm_readv", "process_vm_writev", "vm86", "vm86old", "uselib",
])
def test_denied_unconditionally_with_eperm(name: str) -> None:
    rules = rules_for(seccomp.profile("x86_64"), name)
    assert len(rules) == 1 and "args" not in rules[0]
    assert rules[0]["errnoRet"] == errno.EPERM


def test_clone3_answers_enosys_so_libc_falls_back_to_clone() -> None:
    (rule,) = rules_for(seccomp.profile("x86_64"), "clone3")
    assert rule["errnoRet"] == errno.ENOSYS and "args" not in rule


def clone_denied(profile: dict, flags: int) -> bool:
    return any(flags & arg["value"] == arg["valueTwo"] for rule in rules_for(profile, "clone") for arg in rule["args"])


def test_clone_is_denied_exactly_for_namespace_flags() -> None:
    profile = seccomp.profile("x86_64")
    for rule in rules_for(profile, "clone"):
        assert [arg["op"] for arg in rule["args"]] == ["SCMP_CMP_MASKED_EQ"] and rule["args"][0]["index"] == 0
    sigchld, thread_flags = 17, 0x3D0F00  # fork(); pthread_create's CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|...
    assert not clone_denied(profile, sigchld)
    assert not clone_denied(profile, thread_flags)
    assert not clone_denied(profile, 0x4111)  # vfork: CLONE_VM|CLONE_VFORK|SIGCHLD
    for flag in seccomp.CLONE_NEW_FLAGS:
        assert clone_denied(profile, flag | sigchld), hex(flag)
    assert sum(seccomp.CLONE_NEW_FLAGS) == 0x7E020000  # Docker's mask


def test_personality_rules_are_exactly_dockers_allowlist() -> None:
    for value in seccomp.PERSONALITY_ALLOWED:
        assert not seccomp.personality_denied(value), hex(value)
    for bit in range(32):
        assert seccomp.personality_denied(1 << bit) is ((1 << bit) not in (0x8, 0x20000)), bit
    for value in (0x0040000, 0x0400000, 0xFFFFFFF7, 0xFFFDFFFF, 0xFFFDFFF7, 0x7FFFFFFF, 0x20009, 0x1):
        assert seccomp.personality_denied(value), hex(value)
    rng = random.Random(8)
    for _ in range(100_000):
        value = rng.getrandbits(32)
        assert seccomp.personality_denied(value) is (value not in seccomp.PERSONALITY_ALLOWED)
    # no mask reaches above the 32 bits the kernel reads
    assert all(mask < 1 << 32 for mask, _ in seccomp.personality_rules())


def test_personality_rules_in_the_profile() -> None:
    rules = rules_for(seccomp.profile("x86_64"), "personality")
    assert [(r["args"][0]["value"], r["args"][0]["valueTwo"]) for r in rules] == seccomp.personality_rules()
    assert all(r["errnoRet"] == errno.EPERM for r in rules)
