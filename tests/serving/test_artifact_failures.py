"""A damaged artifact never makes a server ready: it stays up, says why in /readyz, logs it."""

from __future__ import annotations

import json
import logging
import shutil
from functools import partial
from pathlib import Path

import pytest

from model.artifacts import HASH_FIELD, MANIFEST_NAME
from model.runtime import load_generator
from common import endpoints


def largest_file(artifact_dir: Path) -> tuple[Path, str]:
    manifest = json.loads((artifact_dir / MANIFEST_NAME).read_text())
    entry = max(manifest["files"], key=lambda entry: entry["size"])
    return artifact_dir / manifest["attempt"] / entry["path"], entry["path"]


def remove_manifest(artifact_dir: Path) -> str:
    (artifact_dir / MANIFEST_NAME).unlink()
    return f"{MANIFEST_NAME} missing"


def remove_file(artifact_dir: Path) -> str:
    path, name = largest_file(artifact_dir)
    path.unlink()
    return f"{name}: missing"


def truncate_file(artifact_dir: Path) -> str:
    path, name = largest_file(artifact_dir)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return f"{name}: {path.stat().st_size} bytes, the manifest says"


def corrupt_file(artifact_dir: Path) -> str:
    path, name = largest_file(artifact_dir)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return f"{name}: {HASH_FIELD}"


@pytest.mark.parametrize("damage", [remove_manifest, remove_file, truncate_file, corrupt_file])
def test_damaged_artifact_is_never_ready_and_the_reason_is_logged(
    damage, tiny_artifact_dir, tmp_path, start_server, caplog
):
    artifact_dir = tmp_path / "artifact"
    shutil.copytree(tiny_artifact_dir, artifact_dir)
    reason = damage(artifact_dir)

    with caplog.at_level(logging.ERROR, logger="serving.app"):
        server = start_server(partial(load_generator, artifact_dir))
        readyz = server.wait_until_settled()

    assert readyz.status_code == 503
    assert readyz.json()["status"] == "failed"
    assert reason in readyz.json()["reason"]
    # Clients and probes learn what failed, not where the artifact lives on the node (the log has that).
    assert str(tmp_path) not in readyz.text and "/tmp" not in readyz.text
    assert any(reason in record.getMessage() and "never be ready" in record.getMessage() for record in caplog.records)
    # Failed is final: the server keeps answering, and keeps refusing work.
    assert server.client.get(endpoints.HEALTHZ).status_code == 200
    refused = server.generate()
    assert refused.status_code == 503
    assert reason in refused.json()["error"]["message"]
    assert str(tmp_path) not in refused.text
    assert server.client.get(endpoints.READYZ).status_code == 503
