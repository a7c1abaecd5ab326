"""The server's access keys: configured through the environment, or generated on first start.

Generated keys live in ``<data-dir>/credentials.json`` (mode 0600)::

    {"access_key_id": "SF...", "secret_access_key": "..."}
"""

from __future__ import annotations

import json
import secrets
import string
from pathlib import Path

from snapfaas.durable import write_atomic

FILE_NAME = "credentials.json"
ALPHABET = string.ascii_uppercase + string.digits


def generate() -> tuple[str, str]:
    akid = "SFIA" + "".join(secrets.choice(ALPHABET) for _ in range(16))
    secret = secrets.token_urlsafe(30)[:40]
    return akid, secret


def load(data_dir: Path) -> tuple[str, str] | None:
    path = data_dir / FILE_NAME
    try:
        data = json.loads(path.read_text())
        return data["access_key_id"], data["secret_access_key"]
    except (FileNotFoundError, KeyError, ValueError):
        return None


def load_or_create(data_dir: Path) -> tuple[tuple[str, str], bool]:
    """The stored key pair, creating it atomically if absent. Returns ``(pair, created)``."""
    existing = load(data_dir)
    if existing is not None:
        return existing, False
    akid, secret = generate()
    write_atomic(data_dir / FILE_NAME, json.dumps({"access_key_id": akid, "secret_access_key": secret}).encode())
    return (akid, secret), True


def snippet(endpoint: str, akid: str, secret: str, region: str) -> str:
    return f"""# boto3
import boto3
client = boto3.client("lambda", endpoint_url="{endpoint}", region_name="{region}",
                      aws_access_key_id="{akid}", aws_secret_access_key="{secret}")

# AWS CLI
export AWS_ACCESS_KEY_ID={akid} AWS_SECRET_ACCESS_KEY={secret} AWS_DEFAULT_REGION={region}
aws lambda list-functions --endpoint-url {endpoint}
"""


METRICS_TOKEN_FILE = "metrics.token"


def load_or_create_token(path: Path) -> tuple[str, bool]:
    """The bearer token at `path` that reads ``/metrics`` (and nothing else), created 0600 if
    absent. Returns ``(token, created)``; raises ValueError for an empty or short file."""
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = secrets.token_urlsafe(32)
        write_atomic(path, token.encode() + b"\n")
        return token, True
    if len(token) < 16:
        raise ValueError(f"metrics token at {path} is shorter than 16 characters")
    return token, False
