"""Locust ramp and soak tests against a KServe v2 server (batchserve or any other).

    locust -f load_tests/loadgen/locustfile.py --headless -H http://127.0.0.1:8000

Each user sends one infer request after another (JSON tensors shaped from the model's
metadata) and checks every response. The load follows RampThenSoak: up to LOCUST_USERS users
over LOCUST_RAMP_S seconds, held for LOCUST_SOAK_S seconds, then the run stops by itself.

Environment: LOCUST_MODEL (digits), LOCUST_ROWS (samples per request, 1), LOCUST_USERS (64),
LOCUST_RAMP_S (60), LOCUST_SOAK_S (300).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from locust import HttpUser, LoadTestShape, between, events, task

# locust puts this file's folder on sys.path; the request builder lives in the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from load_tests.loadgen import PreparedRequest, build_request

MODEL = os.environ.get("LOCUST_MODEL", "digits")
ROWS = int(os.environ.get("LOCUST_ROWS", "1"))
_request: PreparedRequest | None = None


@events.test_start.add_listener
def _prepare(environment: Any, **_: Any) -> None:
    """Build the request once from the model's metadata."""
    global _request
    import urllib.request

    with urllib.request.urlopen(f"{environment.host}/v2/models/{MODEL}", timeout=10) as r:
        metadata = json.load(r)
    _request = build_request(metadata, ROWS)


class InferUser(HttpUser):
    """One client sending inference requests back to back (with a short think time)."""

    wait_time = between(0.0, 0.01)

    @task
    def infer(self) -> None:
        with self.client.post(
            f"/v2/models/{MODEL}/infer",
            data=_request.body if _request else b"",
            headers=_request.headers if _request else {},
            name=f"infer {MODEL}",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            outputs = response.json().get("outputs") or []
            if not outputs or any(o["shape"][0] != ROWS for o in outputs):
                response.failure(f"unexpected outputs: {outputs!r:.200}")


class RampThenSoak(LoadTestShape):
    """Ramp linearly to LOCUST_USERS, hold for LOCUST_SOAK_S, then stop."""

    users = int(os.environ.get("LOCUST_USERS", "64"))
    ramp_s = float(os.environ.get("LOCUST_RAMP_S", "60"))
    soak_s = float(os.environ.get("LOCUST_SOAK_S", "300"))

    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()
        if elapsed >= self.ramp_s + self.soak_s:
            return None
        if elapsed < self.ramp_s:
            current = max(1, round(self.users * elapsed / self.ramp_s))
            return current, max(1.0, self.users / max(self.ramp_s, 1.0))
        return self.users, float(self.users)
