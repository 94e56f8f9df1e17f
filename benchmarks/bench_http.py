"""Authenticated small JSON requests per second over real HTTP, side by side in one run:

- the appliance (`appliance run`): create and read with an API key (POST /v1/keys, GET /v1/whoami);
- a minimal Litestar app under the same uvicorn (the floor: what any Litestar server costs);
- PocketBase, when `.tools/bin/base` exists, record create and read as a superuser. Build it with
  `GOBIN=$PWD/.tools/bin go install github.com/pocketbase/pocketbase/examples/base@v0.36.0`
  (the latest release needs a newer Go than Debian 12 machines here have).

One load generator drives each server on loopback in turn: wrk (Debian package `wrk`) for
SECONDS per measurement when it is installed, else httpx for a bounded request count (httpx itself
tops out near the bare floor, so install wrk for meaningful ratios). Ratios are what to compare.

    .venv/bin/python benchmarks/bench_http.py [--seconds 4] [--requests 2000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.peers import free_port  # noqa: E402

ROOT_KEY = "bench-root-key-0123456789abcdef"
BARE_APP = """
from litestar import Litestar, get, post

@get("/read")
async def read() -> dict[str, str]:
    return {"tenant": "default", "key_id": "k"}

@post("/create")
async def create(data: dict[str, object]) -> dict[str, object]:
    return {"id": "x", **data}

app = Litestar([read, create])
"""

Request = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]


def _wait(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


async def _load(base: str, request: Request, count: int, concurrency: int, headers: dict[str, str]) -> float:
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        for i in range(20):
            (await request(client, i)).raise_for_status()
        queue = iter(range(count))

        async def worker() -> None:
            for i in queue:
                (await request(client, i)).raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return count / (time.perf_counter() - start)


WRK_SCRIPT = """
counter = 0
request = function()
  counter = counter + 1
  local body = nil
  if wrk.method == "POST" then body = string.gsub(wrk.body, "COUNTER", tostring(counter) .. "-" .. tostring(math.random(1e9))) end
  return wrk.format(nil, nil, nil, body)
end
"""


def _wrk(
    base: str,
    method: str,
    path: str,
    body: str | None,
    headers: dict[str, str],
    seconds: int,
    concurrency: int,
) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f"wrk.method = {method!r}\n")
        if body is not None:
            script.write(f"wrk.body = {body!r}\nwrk.headers['Content-Type'] = 'application/json'\n")
        for name, value in headers.items():
            script.write(f"wrk.headers[{name!r}] = {value!r}\n")
        script.write(WRK_SCRIPT)
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(concurrency), "-d", f"{seconds}s", "-s", script.name, base + path],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script.name)
    if "Non-2xx" in out:
        raise RuntimeError(f"{method} {path}: non-2xx responses under load:\n{out}")
    return float(next(line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec")))


class Load:
    """Measures one operation: wrk for a fixed time when installed, else httpx for a request count."""

    def __init__(self, seconds: int, count: int, concurrency: int) -> None:
        self.seconds, self.count, self.concurrency = seconds, count, concurrency
        self.use_wrk = shutil.which("wrk") is not None

    async def post(self, base: str, path: str, body: str, headers: dict[str, str]) -> float:
        """``body`` is JSON with COUNTER where each request needs a unique value."""
        if self.use_wrk:
            return _wrk(base, "POST", path, body, headers, self.seconds, self.concurrency)
        return await _load(
            base,
            lambda c, i: c.post(
                path, content=body.replace("COUNTER", str(i)), headers={"Content-Type": "application/json"}
            ),
            self.count,
            self.concurrency,
            headers,
        )

    async def get(self, base: str, path: str, headers: dict[str, str]) -> float:
        if self.use_wrk:
            return _wrk(base, "GET", path, None, headers, self.seconds, self.concurrency)
        return await _load(base, lambda c, i: c.get(path), self.count, self.concurrency, headers)


def _start(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def bench_appliance(tmp: Path, load: Load) -> tuple[float, float]:
    port = free_port()
    env = {
        **os.environ,
        "APPLIANCE_DATA_DIR": str(tmp / "appliance"),
        "APPLIANCE_PORT": str(port),
        "APPLIANCE_ROOT_KEY": ROOT_KEY,
        "APPLIANCE_LOG_LEVEL": "WARNING",
        "APPLIANCE_RATE_LIMIT_PER_KEY": "1000000/second",
        "APPLIANCE_RATE_LIMIT_PER_IP": "1000000/second",
    }
    process = _start([sys.executable, "-m", "appliance", "run"], env)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(base + "/healthz", process)
        admin = httpx.post(
            base + "/v1/keys",
            json={"name": "bench", "scopes": ["admin"]},
            headers={"Authorization": f"Bearer {ROOT_KEY}"},
        ).json()["secret"]
        auth = {"Authorization": f"Bearer {admin}"}
        create = await load.post(base, "/v1/keys", '{"name": "kCOUNTER", "scopes": ["storage"]}', auth)
        read = await load.get(base, "/v1/whoami", auth)
        return create, read
    finally:
        process.terminate()
        process.wait(timeout=15)


async def bench_bare(tmp: Path, load: Load) -> tuple[float, float]:
    (tmp / "bare_app.py").write_text(BARE_APP)
    port = free_port()
    process = _start(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bare_app:app",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        dict(os.environ),
        cwd=tmp,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(base + "/read", process)
        auth = {"Authorization": "Bearer unused"}
        create = await load.post(base, "/create", '{"name": "kCOUNTER"}', auth)
        read = await load.get(base, "/read", auth)
        return create, read
    finally:
        process.terminate()
        process.wait(timeout=15)


def _pocketbase() -> str | None:
    local = REPO / ".tools" / "bin" / "base"
    return str(local) if local.exists() else shutil.which("pocketbase")


async def bench_pocketbase(binary: str, tmp: Path, load: Load) -> tuple[float, float]:
    data = tmp / "pb"
    email, password = "bench@example.com", "bench-password-123"
    subprocess.run(
        [binary, "superuser", "upsert", email, password, "--dir", str(data)], check=True, capture_output=True
    )
    port = free_port()
    process = _start([binary, "serve", "--http", f"127.0.0.1:{port}", "--dir", str(data)], dict(os.environ))
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(base + "/api/health", process)
        token = httpx.post(
            base + "/api/collections/_superusers/auth-with-password",
            json={"identity": email, "password": password},
        ).json()["token"]
        auth = {"Authorization": token}
        httpx.post(
            base + "/api/collections",
            headers=auth,
            json={"name": "notes", "type": "base", "fields": [{"name": "name", "type": "text"}]},
        ).raise_for_status()
        first = httpx.post(
            base + "/api/collections/notes/records", headers=auth, json={"name": "first"}
        ).json()["id"]
        create = await load.post(base, "/api/collections/notes/records", '{"name": "kCOUNTER"}', auth)
        read = await load.get(base, f"/api/collections/notes/records/{first}", auth)
        return create, read
    finally:
        process.terminate()
        process.wait(timeout=15)


async def main(seconds: int, count: int, concurrency: int) -> None:
    load = Load(seconds, count, concurrency)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bare = await bench_bare(tmp, load)
        ours = await bench_appliance(tmp, load)
        binary = _pocketbase()
        pocketbase = await bench_pocketbase(binary, tmp, load) if binary else None
    how = f"wrk, {seconds}s each" if load.use_wrk else f"httpx, {count} requests each"
    print(f"{how}, {concurrency} connections, loopback\n")
    print(f"{'server':<28}{'create/s':>10}{'read/s':>10}{'create ratio':>14}{'read ratio':>12}")
    rows = [("bare Litestar (floor)", bare), ("appliance", ours)]
    if pocketbase:
        rows.append(("PocketBase", pocketbase))
    for name, (create, read) in rows:
        print(f"{name:<28}{create:>10.0f}{read:>10.0f}{create / bare[0]:>14.2f}{read / bare[1]:>12.2f}")
    if pocketbase:
        print(
            f"\nappliance / PocketBase: create {ours[0] / pocketbase[0]:.2f}, read {ours[1] / pocketbase[1]:.2f}"
        )
    else:
        print(
            "\nPocketBase not found (.tools/bin/base): see the module docstring to add it to the comparison"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="HTTP throughput: appliance vs bare Litestar vs PocketBase")
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.requests, args.concurrency))
