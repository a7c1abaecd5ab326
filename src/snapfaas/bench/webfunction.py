"""The fourth reference function: a web API (FastAPI + Mangum + AWS Lambda Powertools): the
`examples/powertools-fastapi` example itself (its app.py and requirements.txt, read from the
repository checkout the benches run in), plus `functions/web_fastapi/primed.py`, the same app
primed for SnapStart.

Its dependencies are vendored into the deployment zip as a user would (`pip install --target`
for CPython 3.11 on manylinux x86-64, wheels only, from the configured package index), cached
per requirement list under `cache_root`; it answers an API Gateway HTTP API (payload 2.0) event.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent / "functions" / "web_fastapi"  # primed.py
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "powertools-fastapi"  # app.py, requirements.txt
PYTHON_VERSION = "3.11"  # the bench runtime's


def requirements() -> list[str]:
    return (EXAMPLE / "requirements.txt").read_text().split()


def http_api_event(path: str = "/hello", query: str = "name=bench") -> dict[str, object]:
    """An API Gateway HTTP API (payload format 2.0) GET request event."""
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": query, "cookies": [],
        "headers": {"accept": "application/json", "host": "api.example.test", "user-agent": "snapfaas-bench"},
        "queryStringParameters": dict(p.split("=", 1) for p in query.split("&")) if query else None,
        "requestContext": {
            "accountId": "123456789012", "apiId": "api1234567", "domainName": "api.example.test", "domainPrefix": "api",
            "http": {"method": "GET", "path": path, "protocol": "HTTP/1.1", "sourceIp": "192.0.2.10",
                     "userAgent": "snapfaas-bench"},
            "requestId": "JKJaXmPLvHcESHA=", "routeKey": "$default", "stage": "$default",
            "time": "10/Mar/2026:12:00:00 +0000", "timeEpoch": 1773144000000,
        },
        "isBase64Encoded": False,
    }


def payload() -> bytes:
    return json.dumps(http_api_event()).encode()


def default_cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "snapfaas" / "bench-vendor"


def vendor(cache_root: Path) -> Path:
    """The directory holding the requirements installed for the bench runtime (made once)."""
    reqs = requirements()
    digest = hashlib.sha256("\n".join(sorted(reqs) + [PYTHON_VERSION]).encode()).hexdigest()[:16]
    target = cache_root / f"web-{digest}"
    done = target / ".snapfaas-vendored"
    if done.exists():
        return target
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile", "--upgrade",
         "--target", str(target), "--python-version", PYTHON_VERSION, "--implementation", "cp",
         "--platform", "manylinux2014_x86_64", "--only-binary=:all:", *reqs],
        capture_output=True, text=True, timeout=900,
    )
    if out.returncode != 0:
        raise RuntimeError(f"web function vendoring failed at step 'pip install --target': {out.stderr[-2000:]}")
    done.write_text("\n".join(reqs) + "\n")
    return target


def deployment_zip(cache_root: Path | None = None) -> bytes:
    """The web function's zip: vendored dependencies (without pip's bin/ and caches) + app.py."""
    tree = vendor(cache_root or default_cache_root())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for root, dirs, names in os.walk(tree):
            dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", "bin"))
            for name in sorted(names):
                if not name.startswith(".snapfaas"):
                    path = Path(root) / name
                    archive.write(path, path.relative_to(tree).as_posix())
        archive.writestr("app.py", (EXAMPLE / "app.py").read_text())
        archive.writestr("primed.py", (PACKAGE / "primed.py").read_text())
    return buf.getvalue()
