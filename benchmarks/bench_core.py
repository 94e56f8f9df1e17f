"""Core request overhead: an authenticated appliance call vs a bare Litestar handler, side by side.

Both apps run in this process behind httpx's ASGI transport, so the network is out of the picture
and the ratio is what the appliance adds per request (key lookup in SQLite, tenant resolution,
rate limiting, request logging, problem+json handling).

    .venv/bin/python benchmarks/bench_core.py [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from pathlib import Path

import httpx
from litestar import Litestar, get
from litestar.testing import AsyncTestClient

from appliance.app import create_app
from appliance.config import load_settings

ROOT_KEY = "bench-root-key-0123456789abcdef"


@get("/v1/whoami")
async def bare_whoami() -> dict[str, str]:
    return {"tenant": "default"}


async def _rate(client: httpx.AsyncClient, path: str, headers: dict[str, str], count: int) -> float:
    for _ in range(50):  # warm-up
        await client.get(path, headers=headers)
    start = time.perf_counter()
    for _ in range(count):
        response = await client.get(path, headers=headers)
        assert response.status_code == 200, response.text
    return count / (time.perf_counter() - start)


async def main(count: int) -> None:
    logging.disable(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        # Rate limiting stays on (as in production) with budgets the benchmark does not exhaust.
        settings = load_settings(
            env={},
            data_dir=str(Path(tmp) / "data"),
            root_key=ROOT_KEY,
            rate_limit_per_key="100000/second",
            rate_limit_per_ip="100000/second",
        )
        appliance = create_app(settings)
        async with (
            AsyncTestClient(appliance) as app_client,
            AsyncTestClient(Litestar([bare_whoami])) as bare_client,
        ):
            key = (
                await app_client.post(
                    "/v1/keys",
                    json={"name": "bench", "scopes": ["storage"]},
                    headers={"Authorization": f"Bearer {ROOT_KEY}"},
                )
            ).json()["secret"]
            auth = {"Authorization": f"Bearer {key}"}
            # Interleaved rounds, best of each: the machine is shared and noisy.
            bare = ours = health = 0.0
            for _ in range(3):
                bare = max(bare, await _rate(bare_client, "/v1/whoami", {}, count))
                ours = max(ours, await _rate(app_client, "/v1/whoami", auth, count))
                health = max(health, await _rate(app_client, "/healthz", {}, count))
    print(f"bare Litestar handler        {bare:8.0f} req/s")
    print(f"appliance /healthz (no auth) {health:8.0f} req/s  ratio {health / bare:.2f}")
    print(f"appliance /v1/whoami (key)   {ours:8.0f} req/s  ratio {ours / bare:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    asyncio.run(main(parser.parse_args().requests))
