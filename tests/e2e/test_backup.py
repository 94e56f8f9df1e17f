"""Backups of a running appliance under write load restore to a consistent, verified state."""

from __future__ import annotations

import gzip
import io
import os
import sqlite3
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from appliance.ops.backup import BackupError, backup, restore
from tests.conftest import ROOT, ROOT_KEY
from tests.process import run_appliance


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args], capture_output=True, text=True, env=env, timeout=120
    )


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_backup_under_write_load_restores_consistently(tmp_path: Path) -> None:
    data, restored = tmp_path / "data", tmp_path / "restored"
    env = {
        "APPLIANCE_ROOT_KEY": ROOT_KEY,
        "APPLIANCE_RATE_LIMIT_PER_KEY": "",
        "APPLIANCE_RATE_LIMIT_PER_IP": "",
    }
    with run_appliance(data, env) as proc:
        key = httpx.post(
            proc.url + "/v1/keys", json={"name": "kept", "scopes": ["storage"]}, headers=ROOT
        ).json()
        stop = threading.Event()
        written: list[str] = []

        def write_load() -> None:
            with httpx.Client(base_url=proc.url, headers=ROOT) as client:
                while not stop.is_set() and len(written) < 2000:
                    tenant = f"load-{len(written)}"
                    assert client.post("/v1/tenants", json={"id": tenant, "name": tenant}).status_code == 201
                    written.append(tenant)

        writer = threading.Thread(target=write_load)
        writer.start()
        deadline = time.monotonic() + 30
        while len(written) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        archive = tmp_path / "backup.tar.gz"
        result = _cli("backup", "--data-dir", str(data), str(archive))
        stop.set()
        writer.join()
        assert result.returncode == 0, result.stderr
        assert "backup written" in result.stdout and "files" in result.stderr

    result = _cli("restore", "--data-dir", str(restored), str(archive))
    assert result.returncode == 0, result.stderr
    live_tenants = {r[0] for r in _rows(data / "appliance.db", "SELECT id FROM tenants")}
    restored_tenants = [r[0] for r in _rows(restored / "appliance.db", "SELECT id FROM tenants")]
    loaded = sorted(
        (t for t in restored_tenants if t.startswith("load-")), key=lambda t: int(t.split("-")[1])
    )
    # A snapshot is a point in time: some prefix of the load, nothing torn, nothing invented.
    assert set(restored_tenants) <= live_tenants
    assert loaded == [f"load-{i}" for i in range(len(loaded))] and len(loaded) >= 20
    with run_appliance(restored, {"APPLIANCE_ROOT_KEY": ROOT_KEY}) as proc:
        who = httpx.get(proc.url + "/v1/whoami", headers={"Authorization": f"Bearer {key['secret']}"})
        assert who.status_code == 200 and who.json()["key_id"] == key["id"]


def test_quiescent_backup_restores_identically_including_secrets(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with run_appliance(data) as proc:  # generated root key: its digest lives in the DB
        secret = next(
            line.strip() for line in proc.log().splitlines() if line.strip().startswith("apl_root_")
        )
        httpx.post(
            proc.url + "/v1/tenants",
            json={"id": "acme", "name": "Acme"},
            headers={"Authorization": f"Bearer {secret}"},
        )
    (data / "extra").mkdir()
    (data / "extra" / "object.bin").write_bytes(os.urandom(300_000))
    archive = tmp_path / "b.tar.gz"
    manifest = backup(data, archive)
    assert {"appliance.db", "extra/object.bin"} <= set(manifest.files)
    target = tmp_path / "restored"
    restore(archive, target)
    for table in ("tenants", "api_keys", "meta", "schema_migrations"):
        assert _rows(data / "appliance.db", f"SELECT * FROM {table} ORDER BY 1") == _rows(
            target / "appliance.db", f"SELECT * FROM {table} ORDER BY 1"
        )
    assert (target / "extra" / "object.bin").read_bytes() == (data / "extra" / "object.bin").read_bytes()
    with run_appliance(target) as proc:
        assert "apl_root_" not in proc.log()  # the root key came back with the data
        assert (
            httpx.get(
                proc.url + "/v1/tenants/acme", headers={"Authorization": f"Bearer {secret}"}
            ).status_code
            == 200
        )


def test_restore_refuses_a_non_empty_target_and_a_damaged_archive(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    sqlite3.connect(data / "appliance.db").execute("CREATE TABLE t (x)").connection.close()
    (data / "secret.key").write_bytes(b"k" * 32)
    archive = tmp_path / "b.tar.gz"
    backup(data, archive)
    with pytest.raises(BackupError, match="not empty"):
        restore(archive, data)
    # Swap one file's bytes for others of the same size: only the checksum can tell.
    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(archive, "r:gz") as src, tarfile.open(tampered, "w:gz") as dst:
        for member in src:
            handle = src.extractfile(member)
            content = handle.read() if handle else b""
            if member.name.endswith("secret.key"):
                content = b"x" * len(content)
            dst.addfile(member, fileobj=io.BytesIO(content))
    target = tmp_path / "t"
    with pytest.raises(BackupError, match=r"secret\.key does not match its checksum"):
        restore(tampered, target)
    assert list(target.iterdir()) == []
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(gzip.compress(archive.read_bytes()[:200]))
    with pytest.raises(BackupError, match="undone"):
        restore(truncated, tmp_path / "t2")
    with pytest.raises(BackupError, match=r"no appliance\.db"):
        backup(tmp_path / "nowhere", tmp_path / "x.tar.gz")


def test_scheduled_backups_are_written_and_pruned(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {
        "APPLIANCE_ROOT_KEY": ROOT_KEY,
        "APPLIANCE_BACKUP_INTERVAL_HOURS": "0.0002",
        "APPLIANCE_BACKUP_KEEP": "2",
    }
    with run_appliance(data, env):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(list((data / "backups").glob("*.tar.gz"))) < 2:
            time.sleep(0.1)
        backups = list((data / "backups").glob("appliance-*.tar.gz"))
        assert 1 <= len(backups) <= 2
    restore(sorted(backups)[-1], tmp_path / "restored")
    assert (tmp_path / "restored" / "appliance.db").exists()


def test_backup_of_a_running_appliance_restores_objects_index_jobs_and_keys(tmp_path: Path) -> None:
    data, restored = tmp_path / "data", tmp_path / "restored"
    env = {"APPLIANCE_ROOT_KEY": ROOT_KEY, "APPLIANCE_WORKER": "false"}  # jobs stay queued, as they were
    blob = os.urandom(200_000)
    with run_appliance(data, env) as proc, httpx.Client(base_url=proc.url, headers=ROOT, timeout=30) as http:
        assert http.put("/v1/buckets/docs/objects/report.bin", content=blob).status_code == 201
        index = {"primary_key": "id", "searchable": ["title"], "filterable": ["year"], "sortable": ["year"]}
        assert http.put("/v1/indexes/books", json=index).status_code in (200, 201)
        docs = [{"id": "1", "title": "Dune", "year": 1965}, {"id": "2", "title": "Emma", "year": 1815}]
        assert http.post("/v1/indexes/books/documents?wait=true", json=docs).status_code == 200
        job = http.post("/v1/queues/q/jobs", json={"type": "hello.echo", "payload": {"n": 1}}).json()
        key = http.post("/v1/keys", json={"name": "kept", "scopes": ["storage"]}).json()
        archive = tmp_path / "backup.tar.gz"
        result = _cli("backup", "--data-dir", str(data), str(archive))  # while it runs
        assert result.returncode == 0, result.stderr
    assert _cli("restore", "--data-dir", str(restored), str(archive)).returncode == 0
    with (
        run_appliance(restored, env) as proc,
        httpx.Client(base_url=proc.url, headers=ROOT, timeout=30) as http,
    ):
        assert http.get("/v1/buckets/docs/objects/report.bin").content == blob
        hits = http.post("/v1/indexes/books/search", json={"q": "dune"}).json()
        assert [h["id"] for h in hits["hits"]] == ["1"] and hits["total"] == 1
        restored_job = http.get(f"/v1/queues/q/jobs/{job['id']}").json()
        assert restored_job["status"] == "queued" and restored_job["type"] == "hello.echo"
        who = http.get("/v1/whoami", headers={"Authorization": f"Bearer {key['secret']}"})
        assert who.status_code == 200 and who.json()["key_id"] == key["id"]
