"""Backups of a data dir, safe while the appliance runs, and verified restores.

A backup is a gzipped tar of the data dir: every SQLite database copied through SQLite's online
backup API (a consistent snapshot even while writers are busy), every other file (blobs, keys,
VAPID and signing secrets) as is, and a ``MANIFEST.json`` with each file's size and SHA-256. A
restore goes into an empty directory only, and checks every checksum before it reports success.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec

__all__ = ["BackupError", "Manifest", "backup", "prune", "restore"]

FORMAT = 1
MANIFEST = "MANIFEST.json"
# SQLite's side files are folded into the online copy; temp dirs hold half-written uploads.
_SKIP_SUFFIXES = ("-wal", "-shm", "-journal")
_SKIP_DIRS = {"tmp", "backups"}
_SKIP_ANYWHERE = {".tmp"}
_STAGING = ".backup-staging-"
_CHUNK = 1024 * 1024

Progress = Callable[[str, int], None]


class BackupError(RuntimeError):
    """A backup or restore could not be made; the message says why and what to do."""


class FileEntry(msgspec.Struct):
    size: int
    sha256: str


class Manifest(msgspec.Struct):
    format: int
    created_at: float
    files: dict[str, FileEntry]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())


def _is_database(data_dir: Path, path: Path) -> bool:
    """The appliance's SQLite files sit at the top of the data dir (blobs may be SQLite files too)."""
    return path.parent == data_dir and path.suffix == ".db"


def _walk(data_dir: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(data_dir):
        top = Path(root) == data_dir
        dirs[:] = sorted(
            d
            for d in dirs
            if not (d in _SKIP_ANYWHERE or d.startswith(_STAGING) or (top and d in _SKIP_DIRS))
        )
        for name in sorted(files):
            if not name.endswith(_SKIP_SUFFIXES):
                yield Path(root) / name


def _snapshot(source: Path, target: Path) -> None:
    """Copy a live SQLite database consistently (online backup API; readers and writers carry on)."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dest = sqlite3.connect(target)
    try:
        src.backup(dest, pages=1024)
    finally:
        dest.close()
        src.close()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def backup(data_dir: Path, out: Path, progress: Progress | None = None) -> Manifest:
    """Write a backup of ``data_dir`` to ``out`` (a .tar.gz); returns its manifest.

    Files are hard-linked into a staging dir before and after the databases are snapshotted, so
    every blob the snapshot refers to is in the archive even if it is deleted meanwhile (a blob
    that is not referenced any more is harmless: storage collects orphans).
    """
    if not (data_dir / "appliance.db").exists():
        raise BackupError(f"{data_dir} holds no appliance.db: is it the appliance's data dir (--data-dir)?")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_STAGING, dir=data_dir))
    try:
        staged: dict[str, Path] = {}
        _stage_files(data_dir, staging, staged)
        for path in sorted(data_dir.glob("*.db")):
            staged[path.name] = staging / path.name
            _snapshot(path, staged[path.name])
        _stage_files(data_dir, staging, staged)
        return _write_archive(staged, out, progress)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _stage_files(data_dir: Path, staging: Path, staged: dict[str, Path]) -> None:
    for path in _walk(data_dir):
        name = path.relative_to(data_dir).as_posix()
        if name in staged or _is_database(data_dir, path):
            continue
        target = staging / "files" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except FileNotFoundError:
            continue  # deleted since the walk saw it
        except OSError:
            shutil.copy2(path, target)  # a filesystem without hard links
        staged[name] = target


def _write_archive(staged: dict[str, Path], out: Path, progress: Progress | None) -> Manifest:
    manifest = Manifest(format=FORMAT, created_at=time.time(), files={})
    partial = out.with_name(out.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for name in sorted(staged):
            path = staged[name]
            manifest.files[name] = FileEntry(size=path.stat().st_size, sha256=_sha256(path))
            tar.add(path, arcname=f"data/{name}", recursive=False)
            if progress:
                progress(name, manifest.files[name].size)
        _add_bytes(tar, MANIFEST, msgspec.json.format(msgspec.json.encode(manifest)))
    partial.replace(out)  # a crash mid-backup never leaves a file that looks complete
    return manifest


def _add_bytes(tar: tarfile.TarFile, name: str, content: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    info.mtime = int(time.time())
    with tempfile.TemporaryFile() as buffer:
        buffer.write(content)
        buffer.seek(0)
        tar.addfile(info, buffer)


def _read_manifest(tar: tarfile.TarFile) -> Manifest:
    try:
        member = tar.getmember(MANIFEST)
    except KeyError:
        raise BackupError("the archive has no MANIFEST.json: it is not an appliance backup") from None
    handle = tar.extractfile(member)
    if handle is None:
        raise BackupError("MANIFEST.json in the archive is not a file")
    manifest = msgspec.json.decode(handle.read(), type=Manifest)
    if manifest.format != FORMAT:
        raise BackupError(
            f"backup format {manifest.format} is not supported by this version (expects {FORMAT})"
        )
    return manifest


def restore(archive: Path, data_dir: Path, progress: Progress | None = None) -> Manifest:
    """Restore ``archive`` into ``data_dir``, which must be empty or absent; verifies every checksum."""
    if data_dir.exists() and any(data_dir.iterdir()):
        raise BackupError(f"{data_dir} is not empty: restore only into an empty or new directory")
    if not archive.is_file():
        raise BackupError(f"{archive} does not exist")
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            manifest = _read_manifest(tar)
            _extract(tar, manifest, data_dir, progress)
        _verify(manifest, data_dir)
    except (BackupError, tarfile.TarError, OSError, EOFError, msgspec.DecodeError) as exc:
        shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(parents=True, exist_ok=True)
        reason = exc if isinstance(exc, BackupError) else f"the archive is damaged ({exc})"
        raise BackupError(f"restore failed and was undone: {reason}") from exc
    return manifest


def _extract(tar: tarfile.TarFile, manifest: Manifest, data_dir: Path, progress: Progress | None) -> None:
    for member in tar:
        if member.name == MANIFEST:
            continue
        name = member.name.removeprefix("data/")
        if name not in manifest.files or not member.isfile():
            raise BackupError(f"unexpected entry {member.name!r} in the archive")
        member.name = name
        # The "data" filter refuses absolute paths, links out of the target and device files.
        tar.extract(member, data_dir, filter="data")
        if progress:
            progress(name, member.size)


def _verify(manifest: Manifest, data_dir: Path) -> None:
    for name, entry in manifest.files.items():
        path = data_dir / name
        if not path.is_file():
            raise BackupError(f"{name} is listed in the manifest but missing from the archive")
        if path.stat().st_size != entry.size or _sha256(path) != entry.sha256:
            raise BackupError(f"{name} does not match its checksum")


def prune(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` backups in ``directory``; returns what was deleted."""
    backups = sorted(directory.glob("appliance-*.tar.gz"), key=lambda p: p.stat().st_mtime, reverse=True)
    doomed = backups[keep:]
    for path in doomed:
        path.unlink()
    return doomed
