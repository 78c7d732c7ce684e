"""Generating from the compiled tiny artifact: fidelity to eager diffusers, determinism, verification."""

from __future__ import annotations

import io
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model import tiny
from model.artifacts import MANIFEST_NAME, ArtifactError, read_manifest
from model.keys import CompileOptions
from model.runtime import FluxGenerator, load_generator

PROMPT = "a photo of a cat sitting on the moon"
STEPS = 3
GUIDANCE = 3.5
# float32 graphs traced from the same modules compute what eager diffusers computes; one
# level of 255 allows for a different kernel choice rounding a pixel the other way. The
# observed difference on CPU is 0.
EAGER_TOLERANCE = 1


@pytest.fixture(scope="module")
def generator(tiny_artifact_dir: Path) -> FluxGenerator:
    return load_generator(tiny_artifact_dir)


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_has_exactly_the_compiled_shape(generator: FluxGenerator, tiny_compile_options: CompileOptions):
    image = generator.generate(PROMPT, STEPS, GUIDANCE, seed=1)
    assert generator.shape == tiny_compile_options.shape
    assert (image.height, image.width) == (128, 96)
    assert image.mode == "RGB"


def test_compiled_graphs_match_the_eager_pipeline(generator: FluxGenerator, tiny_compile_options: CompileOptions):
    eager = tiny.pipeline(torch.float32)
    eager.set_progress_bar_config(disable=True)
    for seed, guidance in ((0, GUIDANCE), (11, 1.0)):
        expected = eager(
            PROMPT,
            height=tiny_compile_options.shape.height,
            width=tiny_compile_options.shape.width,
            num_inference_steps=STEPS,
            guidance_scale=guidance,
            generator=torch.Generator("cpu").manual_seed(seed),
            max_sequence_length=tiny_compile_options.max_text_length,
        ).images[0]
        actual = generator.generate(PROMPT, STEPS, guidance, seed)
        difference = np.abs(np.asarray(actual, dtype=np.int16) - np.asarray(expected, dtype=np.int16))
        assert difference.max() <= EAGER_TOLERANCE
        assert np.asarray(expected).std() > 10, "a flat image would make the comparison meaningless"


def test_same_seed_gives_identical_png_bytes_and_another_seed_does_not(generator: FluxGenerator):
    first = _png(generator.generate(PROMPT, STEPS, GUIDANCE, seed=42))
    assert _png(generator.generate(PROMPT, STEPS, GUIDANCE, seed=42)) == first
    assert _png(generator.generate(PROMPT, STEPS, GUIDANCE, seed=43)) != first
    assert _png(generator.generate("a red car at night", STEPS, GUIDANCE, seed=42)) != first


def test_generator_exposes_the_manifest(generator: FluxGenerator, tiny_artifact_dir: Path):
    assert generator.manifest == read_manifest(tiny_artifact_dir)


def test_loading_and_generating_need_no_network_and_no_neuron(
    tiny_artifact_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    def no_network(*args, **kwargs):
        raise AssertionError("the runtime opened a network connection")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    load_generator(tiny_artifact_dir).generate(PROMPT, 1, GUIDANCE, seed=0)
    assert not {"torch_neuronx", "neuronx_distributed"} & set(sys.modules)


@pytest.fixture
def damaged_copy(tiny_artifact_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_artifact_dir, tmp_path / tiny_artifact_dir.name))


@pytest.mark.parametrize(
    "name", ["transformer/model.pt", "vae_decoder/model.pt", "tokenizer_2/tokenizer.json", "pipeline.json"]
)
@pytest.mark.parametrize(
    "how, reason",
    [("missing", "missing"), ("truncated", "bytes, the manifest says"), ("corrupted", "does not match")],
)
def test_damaged_artifact_files_are_refused_naming_the_file(damaged_copy: Path, name: str, how: str, reason: str):
    path = damaged_copy / read_manifest(damaged_copy)["attempt"] / name
    data = path.read_bytes()
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :])
    with pytest.raises(ArtifactError, match=f"{name}: .*{reason}"):
        load_generator(damaged_copy)


def test_unpublished_directory_is_refused(damaged_copy: Path):
    (damaged_copy / MANIFEST_NAME).unlink()
    with pytest.raises(ArtifactError, match=f"{MANIFEST_NAME} missing"):
        load_generator(damaged_copy)
