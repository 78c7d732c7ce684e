"""The artifact directory: publishing it under Mountpoint-for-S3 rules, and reading it back verified.

Mountpoint lets a client write a file only sequentially, only as a new file, and makes
it visible only when it is closed; there is no rename and no lock, and two writers of
one object are not coordinated (the last upload wins, atomically). So a compile:

1. builds everything in local scratch;
2. copies each finished file sequentially into a fresh ``attempts/<id>/`` directory
   that nobody else writes (so nothing is ever overwritten or renamed);
3. writes ``manifest.json`` last: the key, the attempt it points at, and every file's
   size and sha256.

A manifest therefore means "complete", and it is a single small object: whichever of
two concurrent compiles writes it, it points at a complete attempt. Files without a
manifest are an interrupted compile; the next compile ignores them and publishes a new
attempt beside them.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

# The exit status of `model.compile --resolve` when the key has no published artifact yet; the
# serving pods' wait loop (infra/workloads.py) retries on exactly this status.
EXIT_NOT_PUBLISHED = 3
# The exit status of `model.compile` on bad options: a compile Job fails at once on it, since a retry
# fails the same way. Both live here rather than in model/compile.py so infra/ reads them without torch.
EXIT_USAGE = 2

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
ATTEMPTS_DIR = "attempts"
_CHUNK_BYTES = 8 << 20


class ArtifactError(Exception):
    """An artifact directory is unpublished, incomplete or corrupted; the message says which file and how."""


def _write_new_file(path: Path, data: bytes) -> None:
    # "x" = O_CREAT | O_EXCL: never overwrite. fsync before close makes Mountpoint finish
    # the upload (and report its failure) and orders the data before the manifest on disks.
    with path.open("xb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _copy_and_hash(reader, writer, size: int, name: str) -> str:
    """Copy exactly ``size`` bytes sequentially from reader to writer; return their sha256."""
    digest = hashlib.sha256()
    hashing: Future | None = None
    copied = 0
    with ThreadPoolExecutor(max_workers=1) as hasher:
        while copied < size:
            chunk = reader.read(min(_CHUNK_BYTES, size - copied))
            if not chunk:
                raise ArtifactError(f"{name}: ended after {copied} of {size} bytes while reading")
            # Hash on a helper thread while this chunk is written and the next one read:
            # both release the GIL, so hashing costs little on top of copying.
            if hashing is not None:
                hashing.result()
            hashing = hasher.submit(digest.update, chunk)
            writer.write(chunk)
            copied += len(chunk)
        if hashing is not None:
            hashing.result()
    return digest.hexdigest()


def _copy_new_file(source: Path, destination: Path) -> tuple[int, str]:
    """Copy into a new file; return the size and sha256 of the bytes written."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb", buffering=0) as reader, destination.open("xb") as writer:
        size = os.fstat(reader.fileno()).st_size
        sha256 = _copy_and_hash(reader, writer, size, str(source))
        writer.flush()
        os.fsync(writer.fileno())
    return size, sha256


def new_attempt_name() -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{ATTEMPTS_DIR}/{stamp}-{uuid.uuid4().hex[:12]}"


def unfinished_attempts(artifact_dir: Path) -> list[str]:
    """Attempt directories of an artifact that has no manifest (interrupted or still running compiles)."""
    attempts = artifact_dir / ATTEMPTS_DIR
    if (artifact_dir / MANIFEST_NAME).exists() or not attempts.is_dir():
        return []
    return sorted(f"{ATTEMPTS_DIR}/{entry.name}" for entry in attempts.iterdir())


def publish(staged: Path, artifact_dir: Path, manifest: dict) -> bool:
    """Copy every file under ``staged`` into a fresh attempt, then write the manifest
    (``manifest`` plus the attempt, the file list and the copy time in its "timings").

    Returns False when another compile's manifest appeared first: its attempt is as
    complete as ours, so ours is left unreferenced.
    """
    started = time.perf_counter()
    attempt = new_attempt_name()
    attempt_dir = artifact_dir / attempt
    attempt_dir.mkdir(parents=True)
    files = []
    for path in sorted(path for path in staged.rglob("*") if path.is_file()):
        relative = path.relative_to(staged).as_posix()
        size, sha256 = _copy_new_file(path, attempt_dir / relative)
        files.append({"path": relative, "size": size, "sha256": sha256})
    timings = {**manifest["timings"], "copy_s": round(time.perf_counter() - started, 3)}
    document = {"format": MANIFEST_FORMAT, **manifest, "timings": timings, "attempt": attempt, "files": files}
    manifest_path = artifact_dir / MANIFEST_NAME
    try:
        _write_new_file(manifest_path, json.dumps(document, indent=2, sort_keys=True).encode())
    except OSError:
        # Locally the loser gets EEXIST; Mountpoint refuses to reopen an existing object.
        if manifest_path.exists():
            return False
        raise
    return True


def read_manifest(artifact_dir: Path) -> dict:
    path = Path(artifact_dir) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ArtifactError(f"{MANIFEST_NAME} missing in {artifact_dir}: not published (or still compiling)") from None
    except (ValueError, OSError) as error:
        raise ArtifactError(f"{MANIFEST_NAME} in {artifact_dir} is unreadable: {error}") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{MANIFEST_NAME} in {artifact_dir} is not a JSON object")
    missing = {"format", "key", "attempt", "files"} - set(manifest)
    if missing:
        raise ArtifactError(f"{MANIFEST_NAME} in {artifact_dir} lacks {', '.join(sorted(missing))}")
    if manifest["format"] != MANIFEST_FORMAT:
        raise ArtifactError(
            f"{MANIFEST_NAME} in {artifact_dir} has format {manifest['format']}, this code reads {MANIFEST_FORMAT}"
        )
    return manifest


def copy_verified(artifact_dir: Path, destination: Path) -> dict:
    """Copy a published artifact's files into a private local ``destination``; return its manifest.

    Each file is read once, and its size and sha256 are checked on the way. Loaders then
    read the local copy: what they load is exactly what was verified (nobody else writes
    there), torch.jit.load reads a path several times faster than a buffer, and
    parallel_model_load insists on a directory anyway. Raises ArtifactError naming the
    first missing, truncated or corrupted file.
    """
    manifest = read_manifest(artifact_dir)
    attempt_dir = Path(artifact_dir) / manifest["attempt"]
    root = destination.resolve()
    for entry in manifest["files"]:
        target = root / entry["path"]
        if not target.resolve().is_relative_to(root):
            raise ArtifactError(f"{entry['path']}: listed in {MANIFEST_NAME} but outside the artifact")
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy_verified_file(attempt_dir / entry["path"], target, entry["path"], entry["size"], entry["sha256"])
    return manifest


def _copy_verified_file(source: Path, target: Path, name: str, size: int, sha256: str) -> None:
    try:
        reader = source.open("rb", buffering=0)
    except FileNotFoundError:
        raise ArtifactError(f"{name}: missing (expected at {source})") from None
    with reader, target.open("xb") as writer:
        actual_size = os.fstat(reader.fileno()).st_size
        if actual_size != size:
            raise ArtifactError(f"{name}: {actual_size} bytes, the manifest says {size} (truncated or replaced)")
        actual_sha256 = _copy_and_hash(reader, writer, size, name)
    if actual_sha256 != sha256:
        raise ArtifactError(f"{name}: sha256 {actual_sha256} does not match the manifest's {sha256} (corrupted)")
