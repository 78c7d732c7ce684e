"""Where a model's weights, configs, tokenizers and scheduler come from: the tiny model or the Hub.

Only the compile step uses this module, and only its download needs the HuggingFace token:
serving loads everything from the artifact directory. huggingface_hub finds the token itself, in
`HF_TOKEN` or in the file `HF_TOKEN_PATH` names (compile pods mount it there from a Secret).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from model import tiny

# Only the diffusers-format folders: FLUX.1-dev also ships single-file checkpoints
# (flux1-dev.safetensors, ae.safetensors) that would double the download.
HUB_ALLOW_PATTERNS = [
    "model_index.json",
    "scheduler/*",
    "text_encoder/*",
    "text_encoder_2/*",
    "tokenizer/*",
    "tokenizer_2/*",
    "transformer/*",
    "vae/*",
]
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_MODEL_CLASSES = {
    "text_encoder": CLIPTextModel,
    "text_encoder_2": T5EncoderModel,
    "transformer": FluxTransformer2DModel,
    "vae": AutoencoderKL,
}


class SourceUnavailable(Exception):
    """The model could not be fetched (network, token, unknown repository or revision)."""


class ModelSource(Protocol):
    def load_model(self, name: str, dtype: torch.dtype) -> nn.Module: ...
    def config(self, name: str) -> dict: ...
    def tokenizers(self) -> tuple[CLIPTokenizer, T5TokenizerFast]: ...
    def scheduler(self) -> FlowMatchEulerDiscreteScheduler: ...


@dataclass(frozen=True)
class TinySource:
    def load_model(self, name: str, dtype: torch.dtype) -> nn.Module:
        builders = {
            "text_encoder": tiny.clip_text_model,
            "text_encoder_2": tiny.t5_encoder_model,
            "transformer": tiny.transformer,
            "vae": tiny.vae,
        }
        return builders[name]().to(dtype)

    def config(self, name: str) -> dict:
        if name == "text_encoder_2":
            return tiny.t5_encoder_model().config.to_dict()
        return {"transformer": tiny.transformer_config, "vae": tiny.vae_config}[name]()

    def tokenizers(self) -> tuple[CLIPTokenizer, T5TokenizerFast]:
        return tiny.clip_tokenizer(), tiny.t5_tokenizer()

    def scheduler(self) -> FlowMatchEulerDiscreteScheduler:
        return tiny.scheduler()


@dataclass(frozen=True)
class HubSnapshot:
    """A local copy of a diffusers-format FLUX.1 repository at one commit."""

    path: Path

    def load_model(self, name: str, dtype: torch.dtype) -> nn.Module:
        return _MODEL_CLASSES[name].from_pretrained(self.path, subfolder=name, torch_dtype=dtype).eval()

    def config(self, name: str) -> dict:
        model_class = _MODEL_CLASSES[name]
        if name == "text_encoder_2":  # a transformers model: its config class reads config.json
            return model_class.config_class.from_pretrained(self.path, subfolder=name).to_dict()
        return dict(model_class.load_config(self.path, subfolder=name))

    def tokenizers(self) -> tuple[CLIPTokenizer, T5TokenizerFast]:
        return (
            CLIPTokenizer.from_pretrained(self.path, subfolder="tokenizer"),
            T5TokenizerFast.from_pretrained(self.path, subfolder="tokenizer_2"),
        )

    def scheduler(self) -> FlowMatchEulerDiscreteScheduler:
        return FlowMatchEulerDiscreteScheduler.from_pretrained(self.path, subfolder="scheduler")


def check_revision(model: str, revision: str | None) -> None:
    """A Hub model needs a full commit hash: branch names move, and the cache key must not."""
    if model == tiny.MODEL_ID:
        if revision is not None:
            raise ValueError("the tiny model is built in code and takes no --revision")
    elif revision is None or not _COMMIT.match(revision):
        raise ValueError(
            f"model {model!r} needs --revision set to a full 40-character commit hash "
            f"(got {revision!r}): branch names such as 'main' move and would make the cache key lie"
        )


def key_revision(model: str, revision: str | None) -> str:
    """The revision recorded in the cache key; the tiny model's is its code version."""
    return tiny.TINY_REVISION if model == tiny.MODEL_ID else revision


def open_source(model: str, revision: str | None) -> ModelSource:
    """The tiny model, or a Hub snapshot downloaded into the local HuggingFace cache."""
    check_revision(model, revision)
    if model == tiny.MODEL_ID:
        return TinySource()
    from huggingface_hub import snapshot_download

    try:
        snapshot = snapshot_download(repo_id=model, revision=revision, allow_patterns=HUB_ALLOW_PATTERNS)
    except (OSError, ValueError) as error:
        # Hub errors are OSErrors (gated repository without a token, unknown revision, no
        # network), invalid repository ids ValueErrors: say which, in one line.
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SourceUnavailable(f"cannot download {model}@{revision}: {reason}") from None
    return HubSnapshot(Path(snapshot))
