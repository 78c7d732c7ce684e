"""Load a shape's published graphs and the weights they take, both verified, and generate images.

The pipeline is diffusers' FluxPipeline with each model replaced by a thin wrapper
around a compiled graph, as the walkthrough does: tokenization, the scheduler, latent
packing, the rotary tables and image post-processing stay diffusers' own code, running
on the CPU. Nothing here touches the network or the HuggingFace token.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from PIL import Image
from transformers import CLIPTokenizer, T5TokenizerFast

from common.shapes import Shape, parse_shape
from model.artifacts import ArtifactError, copy_verified, read_manifest
from model.backends import Graph, get_backend
from model.components import (
    COMPONENTS,
    PIPELINE_CONFIG_NAME,
    TEXT_ENCODER,
    TEXT_ENCODER_2,
    TORCH_DTYPES,
    TRANSFORMER,
    VAE_DECODER,
    WEIGHTS_CONFIG_NAME,
    rotary_tables,
)
from model.families import FAMILIES, Family
from common.adapters import Adapter
from model.keys import WEIGHTS_DIR


@dataclass(frozen=True)
class ServedArtifact:
    """What a shape's published graphs and the weights loaded with them are: the model, its family, the shape, the
    weights and the adapters merged into them. Read from small files (both manifests and the graphs' pipeline
    config) before the long load, so a server can say what it serves at once; the load checks that it loaded
    exactly this (``load_generator``'s ``expected``)."""

    model: str
    revision: str
    shape: Shape
    backend: str
    artifact: str  # the graphs' directory name
    created: int  # Unix time the graphs were published
    family: Family
    weights: str  # the weights' directory name, ending in the hash of their key
    weights_key: dict
    adapters: tuple[Adapter, ...]

    @classmethod
    def read(cls, artifact_dir: Path, weights_dir: Path | None = None) -> ServedArtifact:
        """From the published files, before any is verified (the load verifies them); ArtifactError if one is
        missing or unreadable. The weights are `weights_dir`, else those the graphs were compiled with."""
        manifest = read_manifest(artifact_dir)
        config_path = Path(artifact_dir) / manifest["attempt"] / PIPELINE_CONFIG_NAME
        try:
            config = json.loads(config_path.read_bytes())
        except (OSError, ValueError) as error:
            raise ArtifactError(f"{PIPELINE_CONFIG_NAME} of {Path(artifact_dir).name} is unreadable: {error}") from None
        return cls.of(manifest, config, read_manifest(weights_dir or published_weights_dir(artifact_dir, manifest)))

    @classmethod
    def of(cls, manifest: dict, pipeline_config: dict, weights_manifest: dict) -> ServedArtifact:
        key, weights_key = manifest["key"], weights_manifest["key"]
        return cls(
            model=key["model"],
            revision=key["revision"],
            shape=parse_shape(key["shape"]),
            backend=key["backend"],
            artifact=manifest["artifact"],
            created=int(datetime.fromisoformat(manifest["created_at"]).timestamp()),
            family=FAMILIES[pipeline_config["family"]],
            weights=weights_manifest["artifact"],
            weights_key=weights_key,
            adapters=tuple(Adapter.from_key(adapter) for adapter in weights_key["loras"]),
        )

    def differences(self, other: ServedArtifact) -> list[str]:
        """What `other` says otherwise, field by field (a key only by name: it is long, and its artifact's name,
        which ends in its hash, says which)."""
        def shown(value) -> str:
            return value.name if isinstance(value, Family) else str(value)

        fields = [(field.name, getattr(self, field.name), getattr(other, field.name)) for field in dataclasses.fields(self)]
        return [f"another {name}" if isinstance(mine, dict) else f"{name} {shown(theirs)}, not {shown(mine)}"
                for name, mine, theirs in fields if mine != theirs]


class _CompiledClipTextEncoder:
    """Answers FluxPipeline's CLIP call: ``text_encoder(ids, output_hidden_states=False).pooler_output``."""

    def __init__(self, graph: Graph, dtype: torch.dtype):
        self._graph = graph
        self.dtype = dtype

    def __call__(self, input_ids: torch.Tensor, output_hidden_states: bool = False) -> SimpleNamespace:
        return SimpleNamespace(pooler_output=self._graph(input_ids))


class _CompiledT5Encoder:
    """Answers FluxPipeline's T5 call: ``text_encoder_2(ids, output_hidden_states=False)[0]``."""

    def __init__(self, graph: Graph, dtype: torch.dtype):
        self._graph = graph
        self.dtype = dtype

    def __call__(self, input_ids: torch.Tensor, output_hidden_states: bool = False) -> tuple[torch.Tensor]:
        return (self._graph(input_ids),)


class _CompiledTransformer:
    def __init__(self, graph: Graph, dtype: torch.dtype, config: dict):
        self._graph = graph
        self.dtype = dtype
        self.config = SimpleNamespace(**config)
        self._rotary_of: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        guidance: torch.Tensor,
        pooled_projections: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        txt_ids: torch.Tensor,
        img_ids: torch.Tensor,
        joint_attention_kwargs: dict | None = None,
        return_dict: bool = False,
    ) -> tuple[torch.Tensor]:
        # The positions are the compiled shape's every time: their rotary tables are computed once.
        positions = (tuple(txt_ids.shape), tuple(img_ids.shape))
        if positions not in self._rotary_of:
            self._rotary_of[positions] = rotary_tables(vars(self.config), txt_ids, img_ids)
        rotary = self._rotary_of[positions]
        extra = (guidance,) if self.config.guidance_embeds else ()
        return (self._graph(hidden_states, encoder_hidden_states, pooled_projections, timestep, *rotary, *extra),)


class _CompiledVaeDecoder:
    def __init__(self, graph: Graph, config: dict):
        self._graph = graph
        self.config = SimpleNamespace(**config)

    def decode(self, latents: torch.Tensor, return_dict: bool = False) -> tuple[torch.Tensor]:
        return (self._graph(latents),)


class _CpuFluxPipeline(FluxPipeline):
    @property
    def _execution_device(self) -> torch.device:
        # The wrappers are not nn.Modules, so diffusers cannot infer a device; latents,
        # noise and every tensor handed to the graphs live on the CPU.
        return torch.device("cpu")


class GenerationStopped(Exception):
    """A generation was stopped at a step end because its ``should_stop`` said so."""


class FluxGenerator:
    """Text-to-image for one compiled shape. Not thread-safe: the caller runs one generate at a time."""

    def __init__(
        self,
        pipeline: FluxPipeline,
        shape: Shape,
        family: Family,
        manifest: dict,
        max_text_length: int,
        staging: tempfile.TemporaryDirectory,
    ):
        self.shape = shape
        # What requests may ask of this model: steps, guidance, quality (model/families.py).
        self.family = family
        self.manifest = manifest
        self._pipeline = pipeline
        self._max_text_length = max_text_length
        # The verified local copy the graphs were loaded from; lazy loaders may still read it.
        self._staging = staging

    def generate(
        self,
        prompt: str,
        num_inference_steps: int,
        guidance_scale: float,
        seed: int,
        should_stop: Callable[[], bool] | None = None,
        on_step: Callable[[int, int, torch.Tensor], None] | None = None,
    ) -> Image.Image:
        """Deterministic for a given seed: the noise comes from a CPU generator seeded here.

        ``should_stop`` is asked after every denoising step; when it answers True the
        generation is abandoned there and GenerationStopped is raised (no image). Otherwise
        ``on_step(done, total, latents)`` is called with the steps done so far, their total
        and the packed latents (for progress and previews).
        """

        def at_step_end(pipeline: FluxPipeline, step: int, timestep: torch.Tensor, tensors: dict) -> dict:
            if should_stop is not None and should_stop():
                raise GenerationStopped(f"stopped after denoising step {step + 1} of {num_inference_steps}")
            if on_step is not None:
                on_step(step + 1, num_inference_steps, tensors["latents"])
            return tensors

        result = self._pipeline(
            prompt=prompt,
            height=self.shape.height,
            width=self.shape.width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=torch.Generator("cpu").manual_seed(seed),
            max_sequence_length=self._max_text_length,
            output_type="pil",
            callback_on_step_end=at_step_end if should_stop is not None or on_step is not None else None,
        )
        return result.images[0]


# The verified local copies under TMPDIR. Each is locked (flock on its directory) by the process
# using it, so copies a killed process left behind are recognisable: in a pod, TMPDIR is an
# emptyDir that outlives container restarts, and one abandoned copy would fill it. Creating a copy
# and removing abandoned ones take turns on a lock file, so a copy is never seen before it is locked.
# (Earlier versions named their unlocked copies flux-artifact-*: this prefix never matches those.)
STAGING_PREFIX = "flux-verified-copy-"
STAGING_GUARD = ".flux-verified-copy.lock"


class _LockedStaging(tempfile.TemporaryDirectory):
    """A private temporary directory, flock-ed for as long as this object lives."""

    def __init__(self):
        super().__init__(prefix=STAGING_PREFIX)
        lock = os.open(self.name, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(lock, fcntl.LOCK_EX)
        self._release = weakref.finalize(self, os.close, lock)

    def cleanup(self) -> None:
        super().cleanup()
        self._release()


def _new_staging() -> _LockedStaging:
    """A fresh locked copy directory under TMPDIR, after deleting the copies no live process holds."""
    root = Path(tempfile.gettempdir())
    with open(root / STAGING_GUARD, "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        _remove_abandoned_copies(root)
        return _LockedStaging()


def _remove_abandoned_copies(root: Path) -> None:
    for candidate in root.glob(f"{STAGING_PREFIX}*"):
        try:
            descriptor = os.open(candidate, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue  # not a directory, or already gone
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # in use
        else:
            shutil.rmtree(candidate, ignore_errors=True)
        finally:
            os.close(descriptor)


def load_generator(artifact_dir: Path, weights_dir: Path | None = None, readers: int | None = None,
                   expected: ServedArtifact | None = None) -> FluxGenerator:
    """Load a shape's published graphs and the weights they take, every file read once and checked
    against its manifest.

    The weights are `weights_dir`, or those the graphs were compiled with, under `<root>/weights/` beside
    them. Both artifacts are copied, verified, into one private temporary directory (under TMPDIR) that
    lives as long as the generator, ``readers`` files at once (default: model.artifacts.default_readers(),
    i.e. FLUX_ARTIFACT_READERS or two per core), and loaded from there: the loaders read that copy from
    memory (TMPDIR is memory-backed in the pods, else the just-written pages are in the page cache), so
    the published bytes cross the storage once. Raises ArtifactError naming the file for a missing
    manifest, a missing, truncated or corrupted file, weights that are not the ones the graphs take, or
    graphs this artifact's backend cannot load, or (given ``expected``, what a server announced before the load)
    artifacts that are not what it says, before any graph is loaded; BackendUnavailable when that backend cannot
    run here (a neuron artifact without the Neuron SDK). Copies under TMPDIR that a killed process left behind
    are deleted first.
    """
    staging = _new_staging()
    try:
        return _load(Path(artifact_dir), weights_dir, Path(staging.name), staging, readers, expected)
    except BaseException:
        staging.cleanup()
        raise


def published_weights_dir(artifact_dir: Path, manifest: dict) -> Path:
    """Where the weights the graphs were compiled with are published: beside them, under the same root."""
    return Path(artifact_dir).parent / WEIGHTS_DIR / manifest["weights"]["artifact"]


def _load(artifact_dir: Path, weights_dir: Path | None, local: Path, staging: tempfile.TemporaryDirectory,
          readers: int | None, expected: ServedArtifact | None) -> FluxGenerator:
    manifest = copy_verified(artifact_dir, local / "graphs", readers)
    weights_dir = weights_dir or published_weights_dir(artifact_dir, manifest)
    weights_manifest = copy_verified(weights_dir, local / "weights", readers)
    config = json.loads((local / "graphs" / PIPELINE_CONFIG_NAME).read_text())
    loaded = ServedArtifact.of(manifest, config, weights_manifest)
    if expected is not None and loaded != expected:
        raise ArtifactError(f"the artifacts loaded are not those announced: {'; '.join(expected.differences(loaded))}")
    weights = json.loads((local / "weights" / WEIGHTS_CONFIG_NAME).read_text())["components"]
    if set(config["graphs"]) != set(COMPONENTS):
        raise ArtifactError(f"{PIPELINE_CONFIG_NAME}: graphs {sorted(config['graphs'])}, expected {list(COMPONENTS)}")
    for component in COMPONENTS:
        if weights.get(component, {}).get("layout") != config["weights_layouts"][component]:
            raise ArtifactError(f"{weights_dir.name} does not hold the weights {artifact_dir.name}'s {component} "
                                f"graph takes (their names, shapes or dtypes differ)")
    key = manifest["key"]
    backend = get_backend(key["backend"], key["target"])
    graphs = {
        component: backend.load_graph(local / "graphs" / component,
                                      [local / "weights" / path for path in weights[component]["files"]])
        for component in COMPONENTS
    }
    dtype = TORCH_DTYPES[config["dtype"]]
    scheduler_config = json.loads((local / "graphs" / "scheduler" / "scheduler_config.json").read_text())
    pipeline = _CpuFluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(scheduler_config),
        vae=_CompiledVaeDecoder(graphs[VAE_DECODER], config["vae"]),
        text_encoder=_CompiledClipTextEncoder(graphs[TEXT_ENCODER], dtype),
        tokenizer=CLIPTokenizer.from_pretrained(local / "graphs" / "tokenizer"),
        text_encoder_2=_CompiledT5Encoder(graphs[TEXT_ENCODER_2], dtype),
        tokenizer_2=T5TokenizerFast.from_pretrained(local / "graphs" / "tokenizer_2"),
        transformer=_CompiledTransformer(graphs[TRANSFORMER], dtype, config["transformer"]),
    )
    pipeline.set_progress_bar_config(disable=True)
    return FluxGenerator(pipeline, loaded.shape, loaded.family, manifest, config["max_text_length"], staging)
