"""A boto3 Lambda client (and a SigV4-signed raw request helper) for the CLI."""

from __future__ import annotations

import dataclasses
import os
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from snapfaas import credentials
from snapfaas.config import credentials_from_env


@dataclasses.dataclass(frozen=True)
class Connection:
    endpoint: str
    region: str
    access_key_id: str
    secret_access_key: str

    @classmethod
    def discover(cls, endpoint: str, data_dir: Path, region: str, environ: Mapping[str, str]) -> Connection:
        pair = credentials_from_env(environ)
        if pair:
            akid, secret = next(iter(pair.items()))
        else:
            stored = credentials.load(data_dir)
            if stored is None:
                raise SystemExit(
                    f"no credentials: set SNAPFAAS_ACCESS_KEY_ID/SNAPFAAS_SECRET_ACCESS_KEY or point --data-dir at the server's data dir "
                    f"(looked for {data_dir / credentials.FILE_NAME})"
                )
            akid, secret = stored
        return cls(endpoint, region, akid, secret)

    def lambda_client(self, read_timeout: int = 960) -> Any:
        import boto3  # the CLI's commands that only sign raw requests do not load it (~0.15 s CPU each)
        return boto3.client(
            "lambda",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(retries={"total_max_attempts": 1}, read_timeout=read_timeout, connect_timeout=5),
        )

    def signed_get(self, path: str) -> bytes:
        return self.signed_request("GET", path)

    def signed_request(self, method: str, path: str, body: bytes | None = None, timeout: float = 30) -> bytes:
        """A SigV4-signed request to a snapfaas route; raises urllib.error.HTTPError on an error status."""
        with self.signed_open(method, path, body, timeout) as response:
            return response.read()

    def signed_open(self, method: str, path: str, body: bytes | None = None, timeout: float | None = 30):  # type: ignore[no-untyped-def]
        """The open response of a SigV4-signed request (read it as it streams; close it);
        `timeout` None waits for data without limit (a followed log)."""
        request = AWSRequest(method=method, url=self.endpoint + path, data=body)
        if body is not None:
            request.headers["Content-Type"] = "application/json"
        SigV4Auth(Credentials(self.access_key_id, self.secret_access_key), "lambda", self.region).add_auth(request)
        prepared = urllib.request.Request(self.endpoint + path, data=body, method=method, headers=dict(request.headers.items()))
        return urllib.request.urlopen(prepared, timeout=timeout)


def default_data_dir() -> Path:
    return Path(os.environ.get("SNAPFAAS_DATA_DIR", ".snapfaas"))
