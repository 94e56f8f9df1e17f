"""What several nodes must share, settable from config: the VAPID key; and `appliance backup` with PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from py_vapid import Vapid02

from appliance.cli import cli
from appliance.config import ConfigError
from appliance.notify.webpush import VAPID_FILE, load_vapid, public_key


def test_a_configured_vapid_key_is_the_same_on_every_node(tmp_path: Path) -> None:
    key = Vapid02()
    key.generate_keys()
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    node_a, node_b = load_vapid(tmp_path / "a", pem), load_vapid(tmp_path / "b", pem)
    assert public_key(node_a) == public_key(node_b) == public_key(key)
    assert not (tmp_path / "a" / VAPID_FILE).exists()  # nothing generated into the data dir
    # Unset: each data dir generates its own, which is why several nodes need the setting.
    assert public_key(load_vapid(tmp_path / "c")) != public_key(load_vapid(tmp_path / "d"))
    with pytest.raises(ConfigError, match="APPLIANCE_VAPID_PRIVATE_KEY"):
        load_vapid(tmp_path / "e", "not a key")


def test_backup_with_postgresql_metadata_points_to_pg_dump(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["backup", str(tmp_path / "out.tar.gz"), "--data-dir", str(tmp_path / "data")],
        env={"APPLIANCE_DATABASE_URL": "postgresql://u@127.0.0.1:1/app"},
    )
    assert result.exit_code != 0
    assert "pg_dump" in result.output and "APPLIANCE_DATABASE_URL" in result.output
    assert not (tmp_path / "out.tar.gz").exists()
