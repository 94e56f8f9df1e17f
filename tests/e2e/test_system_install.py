"""`./install.sh --system` in a throwaway root: the files it writes, idempotence, and the installed command."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.peers import free_port
from tests.process import ApplianceProcess, _wait_healthy

REPO = Path(__file__).resolve().parents[2]


def _install(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "APPLIANCE_SYSTEM_ROOT": str(root)}
    return subprocess.run(
        [str(REPO / "install.sh"), "--system"], capture_output=True, text=True, env=env, timeout=280, cwd=REPO
    )


@pytest.mark.timeout(300)
def test_system_install_writes_units_settings_and_a_working_command(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = _install(root)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "http://127.0.0.1:8000/admin" in first.stdout

    unit = (root / "etc/systemd/system/appliance.service").read_text()
    for line in (
        "User=appliance",
        "EnvironmentFile=/etc/appliance/appliance.env",
        "ExecStart=/opt/appliance/venv/bin/appliance run",
        "Restart=on-failure",
        "ReadWritePaths=/var/lib/appliance",
        "WantedBy=multi-user.target",
    ):
        assert line in unit
    assert "appliance worker" in (root / "etc/systemd/system/appliance-worker.service").read_text()
    env_file = root / "etc/appliance/appliance.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    settings = dict(
        line.split("=", 1) for line in env_file.read_text().splitlines() if line and not line.startswith("#")
    )
    assert settings["APPLIANCE_DATA_DIR"] == "/var/lib/appliance" and settings[
        "APPLIANCE_ROOT_KEY"
    ].startswith("apl_root_")

    env_file.write_text(env_file.read_text() + "APPLIANCE_MAIL_FROM=ops@example.com\n")  # an operator's edit
    second = _install(root)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "done:" not in second.stdout, second.stdout  # nothing to do the second time
    assert "APPLIANCE_MAIL_FROM=ops@example.com" in env_file.read_text()

    # The unit's ExecStart, with the env file's settings (data dir moved into the throwaway root).
    port = free_port()
    run_env = {
        **os.environ,
        **settings,
        "APPLIANCE_DATA_DIR": str(root / "var/lib/appliance"),
        "APPLIANCE_PORT": str(port),
    }
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(root / "opt/appliance/venv/bin/appliance"), "run"], env=run_env, stdout=log, stderr=log
        )
    try:
        _wait_healthy(
            ApplianceProcess(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path), 20
        )
        headers = {"Authorization": f"Bearer {settings['APPLIANCE_ROOT_KEY']}"}
        assert httpx.get(f"http://127.0.0.1:{port}/v1/whoami", headers=headers).json()["is_root"] is True
    finally:
        process.terminate()
        process.wait(timeout=15)
