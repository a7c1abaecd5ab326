"""The template tier's floor: what cloning an initialized process by `fork` costs.

Issue 14 asks whether a *template tier* (one restored, never-invoked environment per hot
version, new environments cloned from it) could beat a CRIU restore, measured against the
"~1 ms fork floor". This bench measures that floor for the reference functions themselves:
a process of the bench runtime's Python imports the function's module (its init runs), then
forks `runs` times; per fork it records

- `fork_ms`: how long `os.fork()` takes to return in the parent (the kernel copying the page
  tables and mappings of the initialized process: it grows with the mappings, not with the
  bytes, which stay shared copy-on-write);
- `first_invoke_ms`: from the fork until the child has run the handler once and said so
  through a pipe (a clone's first answer, without any platform around it);
- `child_private_kib`: the child's Private_Dirty memory after that invoke (smaps_rollup),
  what each clone would add.

The stdlib function is the baseline of the same run (a small interpreter: the "~1 ms" fork).
Nothing here is isolated: the children share the parent's namespaces and uid, which is why
the platform does not clone environments this way (README, "The template tier").
"""

from __future__ import annotations

import json
import platform as host_platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FUNCTIONS = {
    "stdlib": "stdlib",
    "numpy-scipy": "numpy_scipy",
    "torch": "torch_mlp",
}

# Runs in the bench runtime's Python: argv = [app.py path, runs]; prints one JSON line.
_PROBE = r"""
import importlib.util, json, os, sys, time
spec = importlib.util.spec_from_file_location("app", sys.argv[1])
app = importlib.util.module_from_spec(spec)
spec.loader.exec_module(app)
runs = int(sys.argv[2])

def private_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1])
    raise RuntimeError("smaps_rollup has no Private_Dirty line")

def mappings():
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)

samples = []
for _ in range(runs):
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r); os.close(done_w)
        app.handler({}, None)
        os.write(ready_w, b"1")
        os.read(done_r, 1)   # the parent reads our memory, then lets us go
        os._exit(0)
    forked = time.perf_counter()
    os.close(ready_w); os.close(done_r)
    if os.read(ready_r, 1) != b"1":
        raise RuntimeError("the child ended before answering")
    answered = time.perf_counter()
    private = private_kib(pid)
    os.write(done_w, b"1")
    os.waitpid(pid, 0)
    os.close(ready_r); os.close(done_w)
    samples.append({"fork_ms": (forked - start) * 1000, "first_invoke_ms": (answered - start) * 1000,
                    "child_private_kib": private})
print(json.dumps({"mappings": mappings(), "parent_rss_kib": int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024,
                  "samples": samples}))
"""


def _app(name: str) -> Path:
    return Path(__file__).parent / "functions" / FUNCTIONS[name] / "app.py"


def measure(runtime_python: str, name: str, runs: int) -> dict[str, Any]:
    """Fork the initialized `name` function `runs` times; medians and the raw samples.

    Raises RuntimeError naming the function if the probe fails."""
    proc = subprocess.run([runtime_python, "-c", _PROBE, str(_app(name)), str(runs)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"template bench: the fork probe of {name} failed: {proc.stderr.strip()[-400:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    samples = data["samples"]
    return {
        "mappings": data["mappings"],
        "parent_rss_mib": round(data["parent_rss_kib"] / 1024, 1),
        "fork_ms": round(statistics.median(s["fork_ms"] for s in samples), 2),
        "first_invoke_ms": round(statistics.median(s["first_invoke_ms"] for s in samples), 2),
        "child_private_mib": round(statistics.median(s["child_private_kib"] for s in samples) / 1024, 2),
        "samples": samples,
    }


def run(say: Callable[[str], None], runtime_python: str, runs: int = 21, only: list[str] | None = None) -> dict[str, Any]:
    """Measure every function (stdlib first: the baseline), interleaving nothing: each probe is
    one process that forks `runs` times."""
    names = [n for n in FUNCTIONS if not only or n in only or n == "stdlib"]
    results: dict[str, Any] = {}
    for name in names:
        say(f"[template] {name}: {runs} forks of the initialized process")
        results[name] = measure(runtime_python, name, runs)
    base = results["stdlib"]["fork_ms"]
    for name, figures in results.items():
        figures["fork_vs_stdlib"] = round(figures["fork_ms"] / base, 1) if base else None
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": host_platform.node(),
            "runs": runs, "functions": results}


def markdown(result: dict[str, Any]) -> str:
    """The results as the markdown `bench-results/template.md` holds."""
    lines = [
        f"Template tier floor (`snapfaas bench template`, {result['time']}, one run; medians of {result['runs']} forks "
        "of the initialized function process, outside any sandbox; the stdlib function is the same run's baseline).",
        "",
        "| function | mappings | parent RSS | fork() returns | fork → first invoke answered | child's private memory after it | fork / stdlib's |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, f in result["functions"].items():
        lines.append(f"| {name} | {f['mappings']} | {f['parent_rss_mib']} MiB | {f['fork_ms']} ms | {f['first_invoke_ms']} ms "
                     f"| {f['child_private_mib']} MiB | {f['fork_vs_stdlib']}x |")
    lines += ["", "A clone made this way shares its parent's network, pid and mount namespaces, /tmp and uid: "
              "the README's \"The template tier\" says why the platform leaves it out.", ""]
    return "\n".join(lines)
