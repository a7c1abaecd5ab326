"""A CPU-accounting runc wrapper for `snapfaas bench blink` (given to the server as `--runc`).

The wrapper is a small C program built here with the host's C compiler: it forks, execs the
real runc with the same arguments and environment (stdio inherited), waits for it, appends one
line `<subcommand> <user us> <system us>` to its log (from `wait4`'s rusage: runc plus every
descendant runc waited for) and exits with runc's status (or re-raises runc's fatal signal).

What runc waits for: for `restore`, CRIU, so `bench/cpu.py` takes CRIU's CPU (the environment
cgroup's minus the restored process's) off the `restore` line. The restored process is not
runc's child by then: its CPU is in none of these lines. The wrapper's own fork/exec/wait (well under 1 ms) is the daemon's child
too and lands in "other helpers". Log lines are short single `write`s with O_APPEND, so lines
from concurrent runc calls never interleave.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SOURCE = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *subcommand(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--root") || !strcmp(a, "--log") || !strcmp(a, "--log-format") || !strcmp(a, "--criu")
            || !strcmp(a, "--rootless")) { i++; continue; }
        if (a[0] == '-') continue;
        return a;
    }
    return "other";
}

int main(int argc, char **argv) {
    pid_t pid = fork();
    if (pid < 0) { perror("runc wrapper: fork"); return 127; }
    if (pid == 0) {
        argv[0] = REAL_RUNC;
        execv(REAL_RUNC, argv);
        perror("runc wrapper: exec");
        _exit(127);
    }
    int status = 0;
    struct rusage usage;
    while (wait4(pid, &status, 0, &usage) < 0) {}
    char line[256];
    int n = snprintf(line, sizeof line, "%s %ld %ld\n", subcommand(argc, argv),
                     (long)usage.ru_utime.tv_sec * 1000000L + usage.ru_utime.tv_usec,
                     (long)usage.ru_stime.tv_sec * 1000000L + usage.ru_stime.tv_usec);
    int fd = open(LOG_PATH, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) { if (write(fd, line, n) < 0) {} close(fd); }
    if (WIFSIGNALED(status)) { signal(WTERMSIG(status), SIG_DFL); kill(getpid(), WTERMSIG(status)); }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}
"""


def _c_string(value: str) -> str:
    if any(c in value for c in '"\\\n'):
        raise ValueError(f"path not usable in the wrapper: {value!r}")
    return f'"{value}"'


def build(directory: Path, real_runc: str = "runc") -> tuple[Path, Path]:
    """Compile the wrapper into `directory`; returns (wrapper binary, its log file)."""
    runc = shutil.which(real_runc) or real_runc
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("runc wrapper build failed at step 'find a C compiler': no cc or gcc on PATH")
    directory.mkdir(parents=True, exist_ok=True)
    source, binary, log = directory / "runc-wrap.c", directory / "runc", directory / "runc-cpu.log"
    source.write_text(SOURCE)
    out = subprocess.run([compiler, "-O2", "-o", str(binary), f"-DREAL_RUNC={_c_string(runc)}", f"-DLOG_PATH={_c_string(str(log))}",
                          str(source)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"runc wrapper build failed at step 'compile': {out.stderr.strip()[-1000:]}")
    binary.chmod(0o755)
    log.touch(mode=0o600)
    return binary, log


def parse_log(text: str) -> dict[str, tuple[int, float]]:
    """{subcommand: (calls, CPU ms)} from wrapper log lines (a torn last line is ignored)."""
    out: dict[str, tuple[int, float]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        try:
            user, system = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        calls, ms = out.get(parts[0], (0, 0.0))
        out[parts[0]] = (calls + 1, ms + (user + system) / 1000)
    return out
