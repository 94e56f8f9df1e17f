"""Create-payment latency: through the appliance vs stripe-python's bare StripeClient, same stripe-mock.

Run: ``.venv/bin/python benchmarks/bench_payments.py`` (needs ``.tools/bin/stripe-mock``; loopback only,
finishes in well under a minute). The appliance path adds the HTTP handling (in-process ASGI), auth,
the idempotency lookups, two ledger transactions and the outbox event around the same Stripe call the
baseline makes; both paths send an idempotency key.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path

import stripe
from litestar.testing import AsyncTestClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.app import create_app  # noqa: E402
from appliance.config import load_settings  # noqa: E402

N = 300
WARMUP = 30
ROOT_KEY = "bench-root-key-0123456789abcdef"
BODY = {"amount": 1999, "currency": "eur", "payment_method": "pm_card_visa"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_stripe_mock() -> tuple[subprocess.Popen[bytes], str]:
    exe = ROOT / ".tools" / "bin" / "stripe-mock"
    path = str(exe) if exe.exists() else shutil.which("stripe-mock")
    if not path:
        sys.exit("stripe-mock not found: run ./install.sh --dev (or put it in .tools/bin)")
    port = free_port()
    proc = subprocess.Popen(
        [path, "-http-addr", f"127.0.0.1:{port}", "-https-addr", f"127.0.0.1:{free_port()}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("stripe-mock did not start")


async def timed(call: Callable[[], Awaitable[None]], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


async def bench(api_base: str, data_dir: str) -> None:
    # stripe-python's own httpx client passes data=<str>, which httpx deprecates; the appliance avoids it.
    warnings.filterwarnings("ignore", message="Use 'content=", category=DeprecationWarning)
    bare = stripe.StripeClient(
        "sk_test_123",
        base_addresses={"api": api_base},
        http_client=stripe.HTTPXClient(timeout=10),
        max_network_retries=0,
    )

    async def direct() -> None:
        await bare.v1.payment_intents.create_async(
            {"amount": 1999, "currency": "eur", "payment_method": "pm_card_visa", "confirm": True},
            {"idempotency_key": str(uuid.uuid4())},
        )

    settings = load_settings(
        env={},
        data_dir=data_dir,
        root_key=ROOT_KEY,
        stripe_key="sk_test_123",
        stripe_api_base=api_base,
        rate_limit_per_key="",
        rate_limit_per_ip="",
        log_level="WARNING",
    )
    app = create_app(settings)
    async with AsyncTestClient(app, base_url="http://appliance.bench") as client:
        headers = {"Authorization": f"Bearer {ROOT_KEY}"}

        async def through() -> None:
            response = await client.post(
                "/v1/payments", json=BODY, headers={**headers, "Idempotency-Key": str(uuid.uuid4())}
            )
            assert response.status_code == 201, response.text

        await timed(direct, WARMUP)
        await timed(through, WARMUP)
        baseline = await timed(direct, N)
        appliance = await timed(through, N)
    report(baseline, appliance)


def report(baseline: list[float], appliance: list[float]) -> None:
    def row(name: str, xs: list[float]) -> str:
        p95 = statistics.quantiles(xs, n=20)[18]
        return f"{name:<34} p50 {statistics.median(xs):7.2f} ms   p95 {p95:7.2f} ms   mean {statistics.fmean(xs):7.2f} ms"

    print(f"create payment, {N} sequential calls each, same stripe-mock")
    print(row("stripe-python StripeClient (direct)", baseline))
    print(row("appliance POST /v1/payments", appliance))
    ratio = statistics.median(appliance) / statistics.median(baseline)
    print(f"ratio appliance/direct (p50): {ratio:.2f}x")


def main() -> None:
    proc, api_base = start_stripe_mock()
    try:
        with tempfile.TemporaryDirectory() as data_dir:
            asyncio.run(bench(api_base, data_dir))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
