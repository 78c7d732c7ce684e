"""Publishing and the verified copy, on synthetic files (no model involved)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from model.artifacts import (
    ATTEMPTS_DIR,
    MANIFEST_NAME,
    ArtifactError,
    copy_verified,
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
    # The big file spans several 8 MiB read chunks.
    return {"a.bin": b"alpha", "graphs/big.bin": bytes(range(256)) * (20 * 4096 + 3), "empty.txt": b""}


@pytest.fixture
def published(tmp_path: Path, files: dict[str, bytes]) -> Path:
    artifact_dir = tmp_path / "artifact"
    assert publish(_stage(tmp_path / "staged", files), artifact_dir, FIELDS)
    return artifact_dir


def test_manifest_lists_every_file_with_size_and_sha256_in_a_fresh_attempt(
    published: Path, files: dict[str, bytes]
) -> None:
    manifest = read_manifest(published)
    assert manifest["key"] == FIELDS["key"]
    assert manifest["attempt"].startswith(f"{ATTEMPTS_DIR}/")
    listed = {entry["path"]: entry for entry in manifest["files"]}
    assert set(listed) == set(files)
    for name, data in files.items():
        assert listed[name]["size"] == len(data)
        assert listed[name]["sha256"] == hashlib.sha256(data).hexdigest()
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
    "how, message", [("missing", "missing"), ("truncated", "bytes"), ("extended", "bytes"), ("corrupted", "sha256")]
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
