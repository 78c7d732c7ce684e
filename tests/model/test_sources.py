"""The Hub source, offline: a diffusers-format snapshot of the tiny model stands in for the download."""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch

from common.shapes import Shape
from model import tiny
from model.build import ensure_compiled, ensure_graphs
from model.keys import CompileOptions
from model.runtime import load_generator
from model.sources import HUB_CONFIG_PATTERNS, HUB_WEIGHT_PATTERNS, SourceUnavailable, open_source

REPO_ID, COMMIT = "someone/flux-tiny", "c" * 40
TOKEN = "hf_secret_token_for_the_download_only"


def token_file(directory: Path) -> Path:
    """The token as a compile pod has it: a file of the Secret, not an environment variable."""
    path = directory / "token"
    path.write_text(TOKEN)
    path.chmod(0o400)
    return path


@pytest.fixture
def hub_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Serve the tiny pipeline, saved in diffusers format, as the Hub's snapshot: only the files the request's
    patterns allow, as snapshot_download fetches them. Record the requests and the token huggingface_hub
    would send with them."""
    saved = tmp_path / "saved"
    tiny.pipeline(torch.float32).save_pretrained(saved)
    requests = []

    def snapshot_download(**request):
        requests.append({**request, "sent_token": huggingface_hub.utils.get_token_to_send(request.get("token"))})
        snapshot = tmp_path / f"snapshot-{len(requests)}"
        for path in saved.rglob("*"):
            relative = path.relative_to(saved).as_posix()
            if path.is_file() and any(fnmatch.fnmatch(relative, pattern) for pattern in request["allow_patterns"]):
                (snapshot / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, snapshot / relative)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    # What HF_TOKEN_PATH sets when huggingface_hub is imported (test_the_hub_reads_the_token_file_hf_token_path_names).
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(token_file(tmp_path)))
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
    # The weights' download has the weights; the graphs' only the configs. No token passed: huggingface_hub
    # reads the mounted file itself and sends it.
    assert hub_snapshot == [
        {"repo_id": REPO_ID, "revision": COMMIT, "allow_patterns": HUB_CONFIG_PATTERNS + HUB_WEIGHT_PATTERNS,
         "sent_token": TOKEN},
        {"repo_id": REPO_ID, "revision": COMMIT, "allow_patterns": HUB_CONFIG_PATTERNS, "sent_token": TOKEN},
    ]
    assert artifact_dir.name.startswith("someone-flux-tiny-cccccccccccc-128x96-float32-cpu-tp1-")
    for path in artifact_dir.rglob("*"):
        assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path
    # Same weights, tokenizers and scheduler as the built-in tiny model: same image.
    from_hub = load_generator(artifact_dir).generate("a photo of a dog", 2, 3.5, seed=5)
    built_in = load_generator(tiny_artifact_dir).generate("a photo of a dog", 2, 3.5, seed=5)
    assert np.array_equal(np.asarray(from_hub), np.asarray(built_in))


def test_the_hub_reads_the_token_file_hf_token_path_names(tmp_path: Path) -> None:
    """A fresh interpreter, as in the compile pod: HF_TOKEN_PATH set, no HF_TOKEN, no network."""
    environment = {key: value for key, value in os.environ.items() if key not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    environment.update(HF_TOKEN_PATH=str(token_file(tmp_path)), HF_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1")
    probe = "from huggingface_hub.utils import build_hf_headers; print(build_hf_headers()['authorization'])"
    result = subprocess.run([sys.executable, "-c", probe], env=environment, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"Bearer {TOKEN}"


def test_download_failures_become_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def gated(**request):
        raise huggingface_hub.errors.GatedRepoError("401 Client Error.\nCannot access gated repo")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    with pytest.raises(SourceUnavailable, match=rf"^cannot download {REPO_ID}@{COMMIT}: 401 Client Error\.$"):
        open_source(REPO_ID, COMMIT, weights=False)


def test_graphs_compile_from_the_configs_alone(hub_snapshot: list[dict], tmp_path: Path) -> None:
    options = CompileOptions(model=REPO_ID, revision=COMMIT, shape=Shape(64, 64), dtype="float32", max_text_length=8)
    graphs = ensure_graphs(options, tmp_path / "out")
    (request,) = hub_snapshot
    downloaded = Path(tmp_path, "snapshot-1")
    assert [path.name for path in downloaded.rglob("*.safetensors")] == [], "no weight was downloaded"
    assert request["allow_patterns"] == HUB_CONFIG_PATTERNS
    assert (graphs / "manifest.json").is_file()

