"""Broadcast fan-out: the appliance's realtime hub against plain ``websockets.broadcast()``, same run.

Both servers run as their own process on loopback; this process holds N WebSocket clients
(default 1,000) for each in turn, then:

* latency: M1 broadcasts, one at a time (the next once every client has the previous one); each
  message carries its send time, so every delivery yields a latency sample (p50, p99);
* throughput: M2 broadcasts sent back to back; deliveries per second until all N x M2 arrived.
  Broadcasts that pile up go to each appliance connection in one write (still one frame each);
  ``websockets.broadcast()`` writes each message on its own;
* server CPU per delivery (user + system time of the server process), one broadcast at a time
  (the latency rounds) and in the burst;
* memory: server RSS growth per connection, after the first 1,000 connections and after all N
  (flat per-connection memory means the two agree).

Benchmark clients never ping (``ping_interval=None``): with 10,000 clients on 2 shared cores their
own keepalive would time out while the loop is busy reading. For the same reason both servers
still ping every 20 s but wait 120 s for the pong (``appliance run`` waits 20 s, uvicorn's default):
the appliance runs as ``appliance run`` with only that uvicorn option changed (see APPLIANCE_SERVER).
Each process may hold 20,000 files, so the servers run apart from the clients.

The trigger is the same for both: a control WebSocket sends the message to the server, which
fans it out (the appliance: a ``publish`` frame through the hub; the baseline: a handler calling
``websockets.broadcast()`` on every connection, encoding the message once).

    .venv/bin/python benchmarks/bench_realtime.py [--clients 1000] [--latency-rounds 100] [--burst 100]
        [--profile DIR]  # the appliance server under pyinstrument; its text report lands in DIR
        [--only appliance|baseline]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

ROOT_KEY = "bench-root-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {ROOT_KEY}"}

BASELINE_SERVER = textwrap.dedent(
    """
    import asyncio, json, sys
    from websockets.asyncio.server import broadcast, serve

    clients = set()

    async def handler(ws):
        if ws.request.path == "/control":
            async for text in ws:
                frame = json.loads(text)
                # Encode once, send to every connection (what websockets.broadcast is for).
                message = json.dumps(
                    {"channel": "bench", "event": "message", "data": frame["data"], "id": "m"},
                    separators=(",", ":"),
                )
                broadcast(clients, message)
            return
        clients.add(ws)
        try:
            await ws.wait_closed()
        finally:
            clients.discard(ws)

    async def main():
        # Keepalive as the appliance's benchmark server: pings every 20 s, a busy loop tolerated 120 s.
        async with serve(
            handler, "127.0.0.1", int(sys.argv[1]), compression=None, max_queue=None, ping_timeout=120
        ):
            await asyncio.Future()

    asyncio.run(main())
    """
)


APPLIANCE_SERVER = textwrap.dedent(
    """
    import sys
    import uvicorn
    from appliance.cli import main

    serve = uvicorn.run

    def run(app, **options):  # `appliance run`'s own options, the pong wait aside
        serve(app, **{**options, "ws_ping_timeout": 120.0})

    uvicorn.run = run
    sys.argv = ["appliance", "run"]
    main()
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@asynccontextmanager
async def server(
    argv: list[str], env: dict[str, str], port: int, ready_url: str, stop: int = signal.SIGTERM
) -> AsyncIterator[int]:
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below)
    process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                log.seek(0)
                tail = log.read()[-2000:].decode(errors="replace")
                raise RuntimeError(f"server {argv} exited with {process.returncode}:\n{tail}")
            try:
                if ready_url.startswith("http"):
                    async with httpx.AsyncClient() as http:
                        if (await http.get(ready_url, timeout=1)).status_code == 200:
                            break
                else:
                    async with connect(ready_url, open_timeout=1):
                        break
            except (OSError, httpx.TransportError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {argv} did not start")
            await asyncio.sleep(0.05)
        yield process.pid
    finally:
        process.send_signal(stop)
        process.wait(timeout=60)
        log.close()


@dataclass
class Result:
    name: str
    clients: int
    latencies_ms: list[float] = field(default_factory=list)
    deliveries_per_s: float = 0.0
    server_us_per_delivery: float = 0.0  # in the burst, where the appliance coalesces writes
    server_us_per_delivery_single: float = 0.0  # in the latency rounds: one broadcast at a time
    rss_per_conn_kib: dict[int, float] = field(default_factory=dict)

    def line(self) -> str:
        lat = sorted(self.latencies_ms)
        p50 = statistics.median(lat)
        memory = "  ".join(f"rss/conn@{n:,}={kib:5.1f} KiB" for n, kib in self.rss_per_conn_kib.items())
        return (
            f"{self.name:<10} clients={self.clients:<6} deliveries/s={self.deliveries_per_s:>9,.0f}"
            f"  p50={p50:6.1f} ms  p99={self.p99():6.1f} ms"
            f"  server CPU/delivery: one at a time {self.server_us_per_delivery_single:4.1f} us,"
            f" burst {self.server_us_per_delivery:4.1f} us  {memory}"
        )

    def p99(self) -> float:
        lat = sorted(self.latencies_ms)
        return lat[min(len(lat) - 1, int(len(lat) * 0.99))]


MESSAGE_MARK = '"event":"message"'  # both servers encode compact JSON


class Fleet:
    """N receiving clients; counts deliveries and records latencies from the embedded send time."""

    def __init__(self) -> None:
        self.sockets: list[ClientConnection] = []
        self.received = 0
        self.target = 0
        self.done = asyncio.Event()
        self.latencies: list[float] | None = None
        self.closed: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def open(
        self, count: int, open_one: Callable[[], Awaitable[ClientConnection]], pid: int
    ) -> dict[int, float]:
        """Open ``count`` clients; returns server RSS growth per connection at 1,000 and at ``count``."""
        before = rss_kib(pid)
        memory: dict[int, float] = {}
        for start in range(0, count, 100):
            batch = await asyncio.gather(*(open_one() for _ in range(min(100, count - start))))
            self.sockets.extend(batch)
            self._tasks += [asyncio.create_task(self._read(ws)) for ws in batch]
            opened = len(self.sockets)
            if opened == 1000 or opened == count:
                await asyncio.sleep(0.5)  # let the server settle (handshakes still being processed)
                memory[opened] = (rss_kib(pid) - before) / opened
        return memory

    def expect(self, deliveries: int, record: bool) -> None:
        self.received, self.target = 0, deliveries
        self.latencies = [] if record else None
        self.done.clear()

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for text in ws:
                assert isinstance(text, str)
                if MESSAGE_MARK not in text:
                    continue
                if self.latencies is not None:
                    self.latencies.append((time.time() - json.loads(text)["data"]["t"]) * 1000)
                self.received += 1
                if self.received >= self.target:
                    self.done.set()
        finally:
            if ws.close_code is not None and ws.close_code != 1000:
                self.closed.append(f"{ws.close_code} {ws.close_reason}")

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.done.wait(), timeout)
        except TimeoutError:
            raise RuntimeError(
                f"{self.received:,} of {self.target:,} deliveries after {timeout:g} s;"
                f" {len(self.closed)} clients closed by the server: {sorted(set(self.closed))[:3]}"
            ) from None

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for start in range(0, len(self.sockets), 500):
            batch = self.sockets[start : start + 500]
            await asyncio.gather(*(ws.close() for ws in batch), return_exceptions=True)


async def measure(
    name: str,
    clients: int,
    rounds: int,
    burst: int,
    pid: int,
    open_client: Callable[[], Awaitable[ClientConnection]],
    control: ClientConnection,
    publish: Callable[[ClientConnection, dict[str, object]], Awaitable[None]],
) -> Result:
    result = Result(name, clients)
    fleet = Fleet()
    result.rss_per_conn_kib = await fleet.open(clients, open_client, pid)
    cpu_start = cpu_s(pid)
    for seq in range(rounds):
        fleet.expect(clients, record=True)
        await publish(control, {"t": time.time(), "seq": seq})
        await fleet.wait(60)
        result.latencies_ms += fleet.latencies or []
    result.server_us_per_delivery_single = (cpu_s(pid) - cpu_start) * 1e6 / (clients * rounds)
    fleet.expect(clients * burst, record=False)
    start, cpu_start = time.perf_counter(), cpu_s(pid)
    for seq in range(burst):
        await publish(control, {"t": time.time(), "seq": seq})
    await fleet.wait(300)  # 1,000,000 deliveries at 10,000 clients on a busy machine
    result.deliveries_per_s = clients * burst / (time.perf_counter() - start)
    result.server_us_per_delivery = (cpu_s(pid) - cpu_start) * 1e6 / (clients * burst)
    await fleet.close()
    return result


CLIENT_OPTIONS: dict[str, Any] = {
    "compression": None,
    "max_size": None,
    "open_timeout": 60,
    "ping_interval": None,  # see the module docstring
    "close_timeout": 2,
}


async def bench_baseline(clients: int, rounds: int, burst: int) -> Result:
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    argv = [sys.executable, "-c", BASELINE_SERVER, str(port)]
    async with server(argv, dict(os.environ), port, url + "/control") as pid:

        async def open_client() -> ClientConnection:
            return await connect(url + "/client", **CLIENT_OPTIONS)

        async def publish(control: ClientConnection, data: dict[str, object]) -> None:
            await control.send(json.dumps({"data": data}))

        async with connect(url + "/control", **CLIENT_OPTIONS) as control:
            return await measure("baseline", clients, rounds, burst, pid, open_client, control, publish)


async def bench_appliance(clients: int, rounds: int, burst: int, profile: Path | None) -> Result:
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
        env.update(
            APPLIANCE_DATA_DIR=data_dir,
            APPLIANCE_PORT=str(port),
            APPLIANCE_ROOT_KEY=ROOT_KEY,
            APPLIANCE_RATE_LIMIT_PER_KEY="",
            APPLIANCE_RATE_LIMIT_PER_IP="",
            APPLIANCE_WORKER="false",
            APPLIANCE_LOG_LEVEL="WARNING",
        )
        argv = [sys.executable, "-c", APPLIANCE_SERVER]
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            report = profile / f"appliance-{clients}.txt"
            argv = [sys.executable, "-m", "pyinstrument", "-r", "text", "-o", str(report), *argv[1:]]
        # uvicorn re-raises the signal it stopped on: SIGINT lets pyinstrument write its report.
        stop = signal.SIGINT if profile is not None else signal.SIGTERM
        async with server(argv, env, port, f"http://127.0.0.1:{port}/healthz", stop) as pid:
            url = f"ws://127.0.0.1:{port}/v1/ws"

            async def open_client() -> ClientConnection:
                ws = await connect(url, additional_headers=AUTH, **CLIENT_OPTIONS)
                await ws.recv()  # welcome
                await ws.send(json.dumps({"op": "subscribe", "channel": "bench"}))
                await ws.recv()  # subscribed
                return ws

            async def publish(control: ClientConnection, data: dict[str, object]) -> None:
                await control.send(json.dumps({"op": "publish", "channel": "bench", "data": data}))

            async with connect(url, additional_headers=AUTH, **CLIENT_OPTIONS) as control:
                await control.recv()  # welcome
                # The acks of its publishes are read and dropped, so they never fill its send queue.
                drain = asyncio.create_task(drain_acks(control))
                try:
                    return await measure(
                        "appliance", clients, rounds, burst, pid, open_client, control, publish
                    )
                finally:
                    drain.cancel()


async def drain_acks(control: ClientConnection) -> None:
    async for _ in control:
        pass


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--latency-rounds", type=int, default=100)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--profile", type=Path, help="run the appliance server under pyinstrument")
    parser.add_argument("--only", choices=["baseline", "appliance"], help="run one side (for profiling)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(
        f"{args.clients} clients, {args.latency_rounds} latency rounds, bursts of {args.burst}, loopback;"
        f" load average {load:.2f} on {os.cpu_count()} cores"
    )
    baseline = appliance = None
    if args.only != "appliance":
        baseline = await bench_baseline(args.clients, args.latency_rounds, args.burst)
        print(baseline.line(), flush=True)
    if args.only != "baseline":
        appliance = await bench_appliance(args.clients, args.latency_rounds, args.burst, args.profile)
        print(appliance.line(), flush=True)
    if baseline and appliance:
        print(
            f"ratio appliance/baseline: throughput {appliance.deliveries_per_s / baseline.deliveries_per_s:.2f}x,"
            f" p99 latency {appliance.p99() / baseline.p99():.2f}x,"
            f" server CPU per delivery {appliance.server_us_per_delivery_single / baseline.server_us_per_delivery_single:.2f}x"
            f" one at a time, {appliance.server_us_per_delivery / baseline.server_us_per_delivery:.2f}x in the burst"
        )


if __name__ == "__main__":
    # SIGTERM (e.g. `timeout`) unwinds like Ctrl-C, so the server processes are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    asyncio.run(main())
