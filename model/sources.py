"""Where a model's configs, weights, tokenizers and scheduler come from: the tiny model or the Hub.

Only the compile uses this module, and only its downloads need the HuggingFace token: serving loads
everything from the published artifacts. huggingface_hub finds the token itself, in `HF_TOKEN` or in the
file `HF_TOKEN_PATH` names (compile pods mount it there from a Secret).

A component comes two ways: loaded with its weights (`load_model`, for the weights artifact), or built from
its config with the same parameters left uninitialised (`build_model`, for compiling graphs, which never
read them): a shape's compile then needs the configs alone, not the tens of GB of weights.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer, PreTrainedModel, T5EncoderModel, T5TokenizerFast
from transformers.modeling_utils import no_init_weights

from model import tiny
from model.keys import TINY_MODELS, TINY_SCHNELL, CompileError, check_revision

# The diffusers-format folders only: FLUX.1-dev also ships single-file checkpoints (flux1-dev.safetensors,
# ae.safetensors) that would double the download. Graphs need the configs and tokenizers, weights the rest.
HUB_CONFIG_PATTERNS = ["model_index.json", "scheduler/*", "tokenizer/*", "tokenizer_2/*", "*/config.json"]
HUB_WEIGHT_PATTERNS = ["text_encoder/*", "text_encoder_2/*", "transformer/*", "vae/*"]
_MODEL_CLASSES = {
    "text_encoder": CLIPTextModel,
    "text_encoder_2": T5EncoderModel,
    "transformer": FluxTransformer2DModel,
    "vae": AutoencoderKL,
}


class SourceUnavailable(CompileError):
    """The model could not be fetched (network, token, unknown repository or revision)."""


class ModelSource(Protocol):
    def pipeline_class(self) -> str: ...
    def load_model(self, name: str, dtype: torch.dtype) -> nn.Module: ...
    def build_model(self, name: str, dtype: torch.dtype) -> nn.Module: ...
    def config(self, name: str) -> dict: ...
    def tokenizers(self) -> tuple[CLIPTokenizer, T5TokenizerFast]: ...
    def scheduler(self) -> FlowMatchEulerDiscreteScheduler: ...


@contextmanager
def _uninitialised(dtype: torch.dtype) -> Iterator[None]:
    """Modules built inside get parameters of `dtype`, allocated and never written: transformers'
    no_init_weights makes torch's init functions no-ops, so a 24 GB transformer costs no time and, until
    something reads it, no memory."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights():
            yield
    finally:
        torch.set_default_dtype(default)


def build_from_config(name: str, config: dict, dtype: torch.dtype) -> nn.Module:
    """A component of the model from its config, as `from_pretrained` builds it, without its weights."""
    model_class = _MODEL_CLASSES[name]
    with _uninitialised(dtype):
        if issubclass(model_class, PreTrainedModel):
            model = model_class._from_config(model_class.config_class.from_dict(config))
        else:
            model = model_class.from_config(config)
    return model.eval()


@dataclass(frozen=True)
class TinySource:
    """The tiny model in FLUX.1-dev's family, or (`timestep_distilled`) in FLUX.1-schnell's."""

    timestep_distilled: bool = False

    def pipeline_class(self) -> str:
        return FluxPipeline.__name__

    def load_model(self, name: str, dtype: torch.dtype) -> nn.Module:
        builders = {
            "text_encoder": tiny.clip_text_model,
            "text_encoder_2": tiny.t5_encoder_model,
            "transformer": lambda: tiny.transformer(guidance_embeds=not self.timestep_distilled),
            "vae": tiny.vae,
        }
        return builders[name]().to(dtype)

    def build_model(self, name: str, dtype: torch.dtype) -> nn.Module:
        return build_from_config(name, self.config(name), dtype)

    def config(self, name: str) -> dict:
        configs = {
            "text_encoder": lambda: tiny.clip_text_config().to_dict(),
            "text_encoder_2": lambda: tiny.t5_config().to_dict(),
            "transformer": lambda: tiny.transformer_config(guidance_embeds=not self.timestep_distilled),
            "vae": tiny.vae_config,
        }
        return configs[name]()

    def tokenizers(self) -> tuple[CLIPTokenizer, T5TokenizerFast]:
        return tiny.clip_tokenizer(), tiny.t5_tokenizer()

    def scheduler(self) -> FlowMatchEulerDiscreteScheduler:
        return tiny.scheduler(dynamic_shifting=not self.timestep_distilled)


@dataclass(frozen=True)
class HubSnapshot:
    """A local copy of a diffusers-format FLUX.1 repository at one commit (its configs, maybe its weights)."""

    path: Path

    def pipeline_class(self) -> str:
        return json.loads((self.path / "model_index.json").read_text())["_class_name"]

    def load_model(self, name: str, dtype: torch.dtype) -> nn.Module:
        return _MODEL_CLASSES[name].from_pretrained(self.path, subfolder=name, torch_dtype=dtype).eval()

    def build_model(self, name: str, dtype: torch.dtype) -> nn.Module:
        return build_from_config(name, self.config(name), dtype)

    def config(self, name: str) -> dict:
        model_class = _MODEL_CLASSES[name]
        if issubclass(model_class, PreTrainedModel):  # a transformers model: its config class reads config.json
            return model_class.config_class.from_pretrained(self.path, subfolder=name).to_dict()
        return dict(model_class.load_config(self.path, subfolder=name))

    def tokenizers(self) -> tuple[CLIPTokenizer, T5TokenizerFast]:
        return (
            CLIPTokenizer.from_pretrained(self.path, subfolder="tokenizer"),
            T5TokenizerFast.from_pretrained(self.path, subfolder="tokenizer_2"),
        )

    def scheduler(self) -> FlowMatchEulerDiscreteScheduler:
        return FlowMatchEulerDiscreteScheduler.from_pretrained(self.path, subfolder="scheduler")


def open_source(model: str, revision: str | None, weights: bool) -> ModelSource:
    """The tiny model, or a Hub snapshot downloaded into the local HuggingFace cache: its configs,
    tokenizers and scheduler, and its weights only when `weights` is set."""
    check_revision(model, revision)
    if model in TINY_MODELS:
        return TinySource(timestep_distilled=model == TINY_SCHNELL)
    from huggingface_hub import snapshot_download

    patterns = HUB_CONFIG_PATTERNS + (HUB_WEIGHT_PATTERNS if weights else [])
    try:
        snapshot = snapshot_download(repo_id=model, revision=revision, allow_patterns=patterns)
    except (OSError, ValueError) as error:
        # Hub errors are OSErrors (gated repository without a token, unknown revision, no
        # network), invalid repository ids ValueErrors: say which, in one line.
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SourceUnavailable(f"cannot download {model}@{revision}: {reason}") from None
    return HubSnapshot(Path(snapshot))
