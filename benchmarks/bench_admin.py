"""Benchmark: the admin session cookie against the bearer key, on the same endpoints, side by side.

Starts ``appliance run`` on a loopback port, signs in once, then times the same requests made with
``Authorization: Bearer <root key>`` (the baseline) and with the admin session cookie + CSRF token
(the UI's path: one extra indexed SQLite read per request). Also times serving the UI's files.
Run: ``.venv/bin/python benchmarks/bench_admin.py`` (about 20 s).
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT_KEY = "bench-root-key-0123456789abcdef"
ROUNDS = 1500


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update(
        APPLIANCE_DATA_DIR=str(data_dir),
        APPLIANCE_PORT=str(port),
        APPLIANCE_ROOT_KEY=ROOT_KEY,
        APPLIANCE_LOG_LEVEL="WARNING",
        APPLIANCE_RATE_LIMIT_PER_KEY="",
        APPLIANCE_RATE_LIMIT_PER_IP="",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("the appliance did not start")


def timed(label: str, call: Callable[[], httpx.Response], expect: int) -> float:
    for _ in range(50):  # warm up
        call()
    samples = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        response = call()
        samples.append(time.perf_counter() - t0)
        assert response.status_code == expect, response.text
    median_ms = statistics.median(samples) * 1000
    p95_ms = statistics.quantiles(samples, n=20)[-1] * 1000
    print(
        f"  {label:<58} median {median_ms:6.3f} ms   p95 {p95_ms:6.3f} ms   {ROUNDS / sum(samples):7.0f} req/s"
    )
    return median_ms


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start(Path(tmp) / "data")
        try:
            bearer = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ROOT_KEY}"})
            browser = httpx.Client(base_url=url)
            csrf = browser.post("/admin/api/session", json={"key": ROOT_KEY}).json()["csrf_token"]
            print(f"appliance admin benchmark, {ROUNDS} sequential requests each, loopback")
            pairs = [
                ("GET /v1/whoami", lambda c: c.get("/v1/whoami"), 200),
                ("GET /v1/keys", lambda c: c.get("/v1/keys"), 200),
                (
                    "DELETE /v1/keys/missing (a write)",
                    lambda c: c.delete("/v1/keys/missing", headers={"X-CSRF-Token": csrf}),
                    404,
                ),
            ]
            for name, call, status in pairs:
                base = timed(f"{name} with bearer key (baseline)", lambda call=call: call(bearer), status)
                cookie = timed(f"{name} with session cookie", lambda call=call: call(browser), status)
                print(f"  -> cookie / bearer median ratio: {cookie / base:.2f}\n")
            static = timed("GET /admin/app.js (static file)", lambda: browser.get("/admin/app.js"), 200)
            health = timed("GET /healthz (baseline: no auth, no file)", lambda: browser.get("/healthz"), 200)
            print(f"  -> static / healthz median ratio: {static / health:.2f}")
        finally:
            proc.terminate()
            proc.wait(timeout=15)


if __name__ == "__main__":
    main()
