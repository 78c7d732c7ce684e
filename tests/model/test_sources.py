"""The Hub source, offline: a diffusers-format snapshot of the tiny model stands in for the download."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch

from model import tiny
from model.compile import CompileOptions, ensure_compiled
from model.runtime import load_generator
from model.sources import HUB_ALLOW_PATTERNS, SourceUnavailable, open_source

REPO_ID, COMMIT = "someone/flux-tiny", "c" * 40
TOKEN = "hf_secret_token_for_the_download_only"


@pytest.fixture
def hub_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Serve the tiny pipeline, saved in diffusers format, as the Hub's snapshot; record the request."""
    snapshot = tmp_path / "snapshot"
    tiny.pipeline(torch.float32).save_pretrained(snapshot)
    requests = {}

    def snapshot_download(**request):
        requests.update(request)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return requests


def test_hub_model_compiles_from_its_snapshot_and_leaves_the_token_behind(
    hub_snapshot: dict, tiny_artifact_dir: Path, tiny_compile_options: CompileOptions, tmp_path: Path
) -> None:
    options = CompileOptions(
        model=REPO_ID,
        revision=COMMIT,
        shape=tiny_compile_options.shape,
        dtype="float32",
        max_text_length=tiny_compile_options.max_text_length,
    )
    artifact_dir = ensure_compiled(options, tmp_path / "out")
    assert hub_snapshot == {
        "repo_id": REPO_ID,
        "revision": COMMIT,
        "token": TOKEN,
        "allow_patterns": HUB_ALLOW_PATTERNS,
    }
    assert artifact_dir.name.startswith("someone-flux-tiny-cccccccccccc-128x96-float32-cpu-tp1-")
    for path in artifact_dir.rglob("*"):
        assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path
    # Same weights, tokenizers and scheduler as the built-in tiny model: same image.
    from_hub = load_generator(artifact_dir).generate("a photo of a dog", 2, 3.5, seed=5)
    built_in = load_generator(tiny_artifact_dir).generate("a photo of a dog", 2, 3.5, seed=5)
    assert np.array_equal(np.asarray(from_hub), np.asarray(built_in))


def test_download_failures_become_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def gated(**request):
        raise huggingface_hub.errors.GatedRepoError("401 Client Error.\nCannot access gated repo")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    with pytest.raises(SourceUnavailable, match=rf"^cannot download {REPO_ID}@{COMMIT}: 401 Client Error\.$"):
        open_source(REPO_ID, COMMIT)
