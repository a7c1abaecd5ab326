"""A small closed-loop load generator: N threads, each with its own keep-alive connection,
sending SigV4-signed requests exactly as boto3 would, recording per-request latency.

Both the platform path (Invoke) and the baseline (the echo endpoint on the same server stack)
go through this same client, so client-side costs cancel out in the ratios.
"""

from __future__ import annotations

import dataclasses
import http.client
import statistics
import threading
import time
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


@dataclasses.dataclass(frozen=True)
class Target:
    endpoint: str
    path: str
    body: bytes
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"

    def signed_headers(self) -> dict[str, str]:
        request = AWSRequest(method="POST", url=self.endpoint + self.path, data=self.body)
        SigV4Auth(Credentials(self.access_key_id, self.secret_access_key), "lambda", self.region).add_auth(request)
        return dict(request.headers.items())


@dataclasses.dataclass(frozen=True)
class LoadResult:
    concurrency: int
    latencies_ms: list[float]
    wall_s: float
    errors: int

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.wall_s if self.wall_s else 0.0

    def percentile(self, q: float) -> float:
        data = sorted(self.latencies_ms)
        if not data:
            return float("nan")
        index = min(len(data) - 1, max(0, round(q / 100 * (len(data) - 1))))
        return data[index]

    def summary(self) -> dict[str, float]:
        return {
            "concurrency": self.concurrency,
            "requests": len(self.latencies_ms),
            "errors": self.errors,
            "p50_ms": round(self.percentile(50), 3),
            "p99_ms": round(self.percentile(99), 3),
            "mean_ms": round(statistics.fmean(self.latencies_ms), 3) if self.latencies_ms else float("nan"),
            "rps": round(self.rps, 1),
        }


def run_load(target: Target, concurrency: int, requests_per_worker: int, warmup: int = 5) -> LoadResult:
    """Closed loop: each worker sends `requests_per_worker` requests back to back."""
    parts = urlsplit(target.endpoint)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    barrier = threading.Barrier(concurrency + 1)

    def worker(slot: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        for i in range(warmup + requests_per_worker):
            if i == warmup:
                barrier.wait()
            started = time.perf_counter()
            conn.request("POST", target.path, body=target.body, headers=target.signed_headers())
            response = conn.getresponse()
            response.read()
            elapsed = (time.perf_counter() - started) * 1000
            if i >= warmup:
                if response.status != 200 or response.getheader("X-Amz-Function-Error"):
                    errors[slot] += 1
                latencies[slot].append(elapsed)
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return LoadResult(concurrency, [x for worker_lat in latencies for x in worker_lat], wall, sum(errors))
