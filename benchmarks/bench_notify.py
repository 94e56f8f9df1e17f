"""Email throughput: N messages through the appliance vs. aiosmtplib sending directly, side by side.

All runs deliver to the same local aiosmtpd server (a sink that counts, in its own process):

- ``raw aiosmtplib + EmailMessage``: one connection, N multipart/alternative messages composed with
  the standard library's ``EmailMessage`` (as a script sending mail directly would) and sent back to
  back with ``send_message``.
- ``raw aiosmtplib, pre-built bytes``: the same messages composed before the clock starts and sent
  with ``sendmail``: the transport floor, what any SMTP client pays at least.
- ``appliance smtp``: N emails accepted through ``POST /v1/email:bulk`` (1000 per request: validated,
  rendered from a template, recorded with their jobs in one transaction), then delivered by the job
  queue's workers through the SMTP adapter's pooled connections, until the server has them all.
- ``appliance capture``: the same through capture mode (the MIME is stored in SQLite instead).

Printed: msgs/s for each and the ratios appliance/raw against both baselines (target >= 0.7).

    .venv/bin/python benchmarks/bench_notify.py [--messages 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import socket
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.controller import Controller
from litestar import Litestar
from litestar.testing import AsyncTestClient

from appliance.app import create_app
from appliance.config import load_settings
from appliance.jobs import JobService

ROOT_KEY = "bench-root-key-0123456789abcdef"
HEADERS = {"Authorization": f"Bearer {ROOT_KEY}"}
TEMPLATE = {
    "subject": "Your order {{ order }} has shipped",
    "html": "<p>Hello {{ name }},</p><p>Order <b>{{ order }}</b> is on its way.</p>",
    "text": "Hello {{ name }},\n\nOrder {{ order }} is on its way.\n",
}


class _Counter:
    """aiosmtpd handler counting accepted messages into a shared integer."""

    def __init__(self, count: Any) -> None:
        self.count = count

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.count.get_lock():
            self.count.value += 1
        return "250 OK"


def _serve(port: int, count: Any, stop: Any) -> None:
    controller = Controller(_Counter(count), hostname="127.0.0.1", port=port)
    controller.start()
    stop.wait()
    controller.stop()


class Sink:
    """The SMTP server, in its own process like a real one (so it does not share the GIL with the client)."""

    def __init__(self, port: int) -> None:
        self._count = multiprocessing.Value("q", 0)
        self._stop = multiprocessing.Event()
        self._process = multiprocessing.Process(
            target=_serve, args=(port, self._count, self._stop), daemon=True
        )
        self._process.start()
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the SMTP sink did not start") from None
                time.sleep(0.05)

    @property
    def count(self) -> int:
        return int(self._count.value)

    def wait_for(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.count < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.count} of {n} messages arrived")
            time.sleep(0.005)

    def close(self) -> None:
        self._stop.set()
        self._process.join(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def compose(index: int) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "bench@appliance.test"
    message["To"] = f"user{index}@example.com"
    message["Subject"] = f"Your order {index} has shipped"
    message.set_content(f"Hello user {index},\n\nOrder {index} is on its way.\n")
    message.add_alternative(
        f"<p>Hello user {index},</p><p>Order <b>{index}</b> is on its way.</p>", subtype="html"
    )
    return message


async def raw_smtp(port: int, sink: Sink, count: int, prebuilt: bool) -> float:
    start_count = sink.count
    messages = [compose(index).as_bytes() for index in range(count)] if prebuilt else []
    started = time.perf_counter()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await client.connect()
    for index in range(count):
        if prebuilt:
            await client.sendmail("bench@appliance.test", [f"user{index}@example.com"], messages[index])
        else:
            await client.send_message(compose(index))
    await client.quit()
    await asyncio.to_thread(sink.wait_for, start_count + count)
    return count / (time.perf_counter() - started)


async def through_appliance(data_dir: Path, smtp_url: str, sink: Sink | None, count: int) -> float:
    settings = load_settings(
        env={},
        data_dir=str(data_dir),
        root_key=ROOT_KEY,
        rate_limit_per_key="",
        rate_limit_per_ip="",
        smtp_url=smtp_url,
        mail_bulk_rate="",
        worker=False,
    )
    app: Litestar = create_app(settings)
    async with AsyncTestClient(app, base_url="http://appliance.bench") as client:
        await client.put("/v1/templates/shipped", json=TEMPLATE, headers=HEADERS)
        jobs: JobService = app.state.ctx.services["jobs"]
        start_count = sink.count if sink else 0
        started = time.perf_counter()
        for offset in range(0, count, 1000):
            batch = [
                {
                    "to": f"user{i}@example.com",
                    "template": "shipped",
                    "data": {"name": f"user {i}", "order": i},
                }
                for i in range(offset, min(count, offset + 1000))
            ]
            response = await client.post("/v1/email:bulk", json=batch, headers=HEADERS)
            assert response.status_code == 202, response.text
        await jobs.drain()
        if sink is not None:
            await asyncio.to_thread(sink.wait_for, start_count + count)
        elapsed = time.perf_counter() - started
        done = await app.state.ctx.db.fetchone(
            "SELECT count(*) AS n FROM emails WHERE status IN ('sent', 'captured')"
        )
        assert done is not None and done["n"] == count, f"{done['n'] if done else 0} of {count} delivered"
    return count / elapsed


async def main(count: int) -> None:
    logging.disable(logging.WARNING)
    port = free_port()
    sink = Sink(port)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            raw = await raw_smtp(port, sink, count, prebuilt=False)
            floor = await raw_smtp(port, sink, count, prebuilt=True)
            smtp = await through_appliance(Path(tmp) / "smtp", f"smtp://127.0.0.1:{port}", sink, count)
            capture = await through_appliance(Path(tmp) / "capture", "", None, count)
    finally:
        sink.close()
    print(f"{count} messages, multipart/alternative, to a local aiosmtpd server")
    print(f"  raw aiosmtplib + EmailMessage       {raw:7.0f} msgs/s")
    print(f"  raw aiosmtplib, pre-built bytes     {floor:7.0f} msgs/s")
    for name, rate in (("smtp", smtp), ("capture", capture)):
        print(
            f"  appliance, {name:<7} adapter         {rate:7.0f} msgs/s"
            f"   ratio {rate / raw:.2f} vs EmailMessage, {rate / floor:.2f} vs pre-built bytes"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    asyncio.run(main(parser.parse_args().messages))
