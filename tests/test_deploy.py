"""compose.yaml, .env.example and the Dockerfile, checked without a Docker engine (none runs here)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from appliance.config import ENV_PREFIX, Settings
from tests.peers import free_port

REPO = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
DOCKERFILE = (REPO / "Dockerfile").read_text()


def test_every_variable_the_compose_file_sets_is_a_setting() -> None:
    fields = {ENV_PREFIX + name.upper() for name in Settings.__struct_fields__}
    env = SERVICES["appliance"]["environment"]
    unknown = sorted(name for name in env if name.startswith(ENV_PREFIX) and name not in fields)
    assert not unknown, f"compose.yaml sets variables the appliance does not read: {unknown}"


def test_every_server_the_appliance_points_at_is_a_service() -> None:
    env = SERVICES["appliance"]["environment"]
    for name in ("APPLIANCE_REDIS_URL", "APPLIANCE_S3_ENDPOINT", "APPLIANCE_MEILI_URL", "APPLIANCE_SMTP_URL"):
        host = re.sub(r"^\w+://", "", env[name]).split(":")[0].split("/")[0]
        assert host in SERVICES, f"{name} points at {host!r}, which compose.yaml does not define"
        assert host in SERVICES["appliance"]["depends_on"]


def test_every_service_has_a_volume_a_healthcheck_and_a_restart_policy() -> None:
    declared = set(COMPOSE["volumes"])
    for name, service in SERVICES.items():
        assert service.get("restart") == "unless-stopped", name
        assert service.get("healthcheck", {}).get("test"), name
        volumes = [v.split(":")[0] for v in service.get("volumes", [])]
        assert volumes and set(volumes) <= declared, f"{name} needs a named volume"


def test_every_secret_comes_from_the_documented_env_file() -> None:
    used = set(re.findall(r"\$\{(\w+)", (REPO / "compose.yaml").read_text()))
    documented = set(re.findall(r"^(\w+)=", (REPO / ".env.example").read_text(), re.M))
    assert used <= documented, f".env.example lacks {sorted(used - documented)}"


def _dockerfile(instruction: str) -> str:
    match = re.search(rf"^{instruction}\s+((?:.*\\\n)*.*)$", DOCKERFILE, re.M)
    assert match, f"Dockerfile has no {instruction}"
    return match.group(1).replace("\\\n", " ")


def test_the_image_runs_as_a_non_root_user() -> None:
    assert _dockerfile("USER").strip() not in ("root", "0")


def test_the_image_entry_command_serves_and_passes_its_healthcheck(tmp_path: Path) -> None:
    command = json.loads(_dockerfile("CMD"))
    assert command[0] == "appliance"
    health = json.loads(re.search(r"CMD (\[.*\])", _dockerfile("HEALTHCHECK")).group(1))  # type: ignore[union-attr]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    image_env = dict(
        shlex.split(pair)[0].split("=", 1) for pair in re.findall(r"(\w+=\S+)", _dockerfile("ENV"))
    )
    env.update(image_env)
    env.update(
        {
            "APPLIANCE_PORT": str(port),
            "APPLIANCE_DATA_DIR": str(tmp_path / "data"),
            "APPLIANCE_ROOT_KEY": "r" * 24,
        }
    )
    executable = str(Path(sys.executable).parent / command[0])
    process = subprocess.Popen(
        [executable, *command[1:]], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        probe = [sys.executable if health[0] == "python" else health[0], *health[1:]]
        probe = [part.replace("8000", str(port)) for part in probe]
        assert subprocess.run(probe, timeout=10).returncode == 0
    finally:
        process.terminate()
        process.wait(timeout=15)
