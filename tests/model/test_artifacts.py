"""Publishing and the verified copy, on synthetic files (no model involved)."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from pathlib import Path

import blake3
import pytest
import xxhash

from common.artifacts import MAX_READERS, READERS_ENV, readers_for_cpus
from model import artifacts
from model.artifacts import (
    ATTEMPTS_DIR,
    HASH_FIELD,
    MANIFEST_NAME,
    ArtifactError,
    copy_verified,
    default_readers,
    publish,
    read_manifest,
    unfinished_attempts,
)

FIELDS = {"key": {"model": "synthetic"}, "timings": {}}


def _stage(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture
def files() -> dict[str, bytes]:
    # The big file spans many read chunks.
    return {"a.bin": b"alpha", "graphs/big.bin": bytes(range(256)) * (20 * 4096 + 3), "empty.txt": b""}


@pytest.fixture
def published(tmp_path: Path, files: dict[str, bytes]) -> Path:
    artifact_dir = tmp_path / "artifact"
    assert publish(_stage(tmp_path / "staged", files), artifact_dir, FIELDS)
    return artifact_dir


def test_manifest_lists_every_file_with_size_and_xxh3_128_in_a_fresh_attempt(
    published: Path, files: dict[str, bytes]
) -> None:
    manifest = read_manifest(published)
    assert manifest["key"] == FIELDS["key"]
    assert manifest["attempt"].startswith(f"{ATTEMPTS_DIR}/")
    listed = {entry["path"]: entry for entry in manifest["files"]}
    assert set(listed) == set(files)
    for name, data in files.items():
        assert listed[name]["size"] == len(data)
        assert listed[name][HASH_FIELD] == xxhash.xxh3_128(data).hexdigest()
        assert (published / manifest["attempt"] / name).read_bytes() == data


def test_a_second_publisher_loses_to_the_first_manifest_and_overwrites_nothing(
    tmp_path: Path, published: Path, files: dict[str, bytes]
) -> None:
    manifest_bytes = (published / MANIFEST_NAME).read_bytes()
    assert not publish(_stage(tmp_path / "staged-2", {"other.bin": b"other"}), published, FIELDS)
    assert (published / MANIFEST_NAME).read_bytes() == manifest_bytes
    assert len(list((published / ATTEMPTS_DIR).iterdir())) == 2


def test_verified_copy_holds_the_published_bytes(tmp_path: Path, published: Path, files: dict[str, bytes]) -> None:
    copy = tmp_path / "copy"
    assert copy_verified(published, copy) == read_manifest(published)
    assert {path.relative_to(copy).as_posix() for path in copy.rglob("*") if path.is_file()} == set(files)
    for name, data in files.items():
        assert (copy / name).read_bytes() == data


def _damage(published: Path, name: str, how: str) -> None:
    path = published / read_manifest(published)["attempt"] / name
    data = path.read_bytes()
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(data[:-1])
    elif how == "extended":
        path.write_bytes(data + b"\0")
    elif how == "corrupted":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))


@pytest.mark.parametrize(
    "how, message", [("missing", "missing"), ("truncated", "bytes"), ("extended", "bytes"), ("corrupted", "xxh3_128 .* does not match")]
)
def test_damaged_files_raise_artifact_error_naming_the_file(
    tmp_path: Path, published: Path, how: str, message: str
) -> None:
    _damage(published, "graphs/big.bin", how)
    with pytest.raises(ArtifactError, match=rf"^graphs/big\.bin: .*{message}"):
        copy_verified(published, tmp_path / "copy")


def test_files_listed_outside_the_artifact_are_refused(tmp_path: Path, published: Path) -> None:
    manifest = read_manifest(published)
    manifest["files"][0]["path"] = "../escaped.bin"
    (published / MANIFEST_NAME).unlink()
    (published / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="outside the artifact"):
        copy_verified(published, tmp_path / "copy")
    assert not (tmp_path / "escaped.bin").exists()


def test_no_manifest_means_not_published(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=f"{MANIFEST_NAME} missing"):
        copy_verified(tmp_path, tmp_path / "copy")


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"format": 1, "key"', "unreadable"),
        (b'{"format": 1}', "lacks attempt, files, key"),
        (b"[]", "not a JSON object"),
    ],
)
def test_unusable_manifests_are_reported(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / MANIFEST_NAME).write_bytes(content)
    with pytest.raises(ArtifactError, match=message):
        read_manifest(tmp_path)


def test_manifest_of_another_format_is_refused(published: Path) -> None:
    manifest = read_manifest(published)
    (published / MANIFEST_NAME).unlink()
    (published / MANIFEST_NAME).write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(ArtifactError, match="format 99"):
        read_manifest(published)


def test_attempts_without_a_manifest_are_unfinished(tmp_path: Path, published: Path) -> None:
    assert unfinished_attempts(published) == []
    half_written = tmp_path / "half-written"
    (half_written / ATTEMPTS_DIR / "20260101T000000Z-abc" / "graphs").mkdir(parents=True)
    assert unfinished_attempts(half_written) == [f"{ATTEMPTS_DIR}/20260101T000000Z-abc"]
    assert unfinished_attempts(tmp_path / "never-compiled") == []


def test_bytes_beyond_the_stated_size_are_refused_while_reading() -> None:
    # Mountpoint caches metadata forever: the size it reports may be older than the bytes.
    with pytest.raises(ArtifactError, match=r"^x\.bin: more than 3 bytes while reading"):
        artifacts._copy_and_hash(io.BytesIO(b"abcd"), io.BytesIO(), 3, "x.bin")


def test_a_file_that_ends_early_while_reading_is_refused() -> None:
    with pytest.raises(ArtifactError, match=r"^x\.bin: ended after 2 of 3 bytes while reading"):
        artifacts._copy_and_hash(io.BytesIO(b"ab"), io.BytesIO(), 3, "x.bin")


def test_files_are_read_concurrently_by_at_most_the_given_number_of_readers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readers = 3
    shards = {f"transformer/tp_{rank}.pt": bytes([rank]) * 1000 for rank in range(8)}
    published = tmp_path / "artifact"
    publish(_stage(tmp_path / "staged", shards), published, FIELDS)
    # No file is copied until `readers` files are being read at once: with fewer readers this never happens.
    all_started = threading.Event()
    active, most_active, lock = 0, 0, threading.Lock()
    copy_one = artifacts._copy_verified_file

    def counted(*args) -> None:
        nonlocal active, most_active
        with lock:
            active += 1
            most_active = max(most_active, active)
            if active == readers:
                all_started.set()
        try:
            assert all_started.wait(timeout=10), f"only {most_active} files were read at once"
            copy_one(*args)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(artifacts, "_copy_verified_file", counted)
    copy_verified(published, tmp_path / "copy", readers=readers)
    assert most_active == readers
    for name, data in shards.items():
        assert (tmp_path / "copy" / name).read_bytes() == data


def test_a_damaged_file_among_parallel_reads_is_named(tmp_path: Path) -> None:
    shards = {f"text_encoder_2/tp_{rank}.pt": bytes([rank]) * 5000 for rank in range(6)}
    published = tmp_path / "artifact"
    publish(_stage(tmp_path / "staged", shards), published, FIELDS)
    _damage(published, "text_encoder_2/tp_4.pt", "corrupted")
    with pytest.raises(ArtifactError, match=r"^text_encoder_2/tp_4\.pt: xxh3_128 .* \(corrupted\)"):
        copy_verified(published, tmp_path / "copy", readers=4)


@pytest.mark.parametrize("value", ["0", "-2", "four", ""])
def test_a_bad_reader_count_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(READERS_ENV, value)
    with pytest.raises(ValueError, match=rf"^{READERS_ENV}={value!r}: expected a whole number"):
        default_readers()


def test_reader_count_comes_from_the_environment_or_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(READERS_ENV, "5")
    assert default_readers() == 5
    monkeypatch.delenv(READERS_ENV)
    monkeypatch.setattr(artifacts.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert default_readers() == readers_for_cpus(3) == 6
    assert readers_for_cpus(1) == 2
    assert readers_for_cpus(128) == MAX_READERS


@pytest.mark.parametrize("manifest_format, field, hasher", [(1, "sha256", hashlib.sha256), (2, "blake3", blake3.blake3)])
def test_an_earlier_format_manifest_is_verified_with_its_own_hash(
    tmp_path: Path, published: Path, files: dict[str, bytes], manifest_format: int, field: str, hasher
) -> None:
    manifest = read_manifest(published)
    legacy = {**manifest, "format": manifest_format,
              "files": [{"path": entry["path"], "size": entry["size"],
                         field: hasher(files[entry["path"]]).hexdigest()} for entry in manifest["files"]]}
    (published / MANIFEST_NAME).unlink()
    (published / MANIFEST_NAME).write_text(json.dumps(legacy))
    copy_verified(published, tmp_path / "copy")
    assert (tmp_path / "copy" / "graphs/big.bin").read_bytes() == files["graphs/big.bin"]
    _damage(published, "graphs/big.bin", "corrupted")
    with pytest.raises(ArtifactError, match=rf"^graphs/big\.bin: {field} .* does not match"):
        copy_verified(published, tmp_path / "copy-2")
