"""Run the appliance as a real process (``python -m appliance run``) for end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.peers import free_port

__all__ = ["ApplianceProcess", "run_appliance"]


@dataclass
class ApplianceProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def run_appliance(
    data_dir: Path, env: dict[str, str] | None = None, timeout: float = 20.0
) -> Iterator[ApplianceProcess]:
    """Start ``appliance run`` on a free port, wait until /healthz answers, stop it (SIGTERM) afterwards."""
    port = free_port()
    log_path = data_dir.parent / f"appliance-{port}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    full_env.update({"APPLIANCE_DATA_DIR": str(data_dir), "APPLIANCE_PORT": str(port), **(env or {})})
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance", "run"],
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    running = ApplianceProcess(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    try:
        _wait_healthy(running, timeout)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_healthy(running: ApplianceProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            pytest.fail(f"appliance exited with {running.process.returncode}:\n{running.log()[-3000:]}")
        try:
            if httpx.get(running.url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail(f"appliance did not answer /healthz within {timeout}s:\n{running.log()[-3000:]}")
