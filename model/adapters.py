"""LoRA adapters merged into a model's weights before they are sharded: W + scale * (alpha / rank) * B A,
what diffusers' ``load_lora_weights`` + ``fuse_lora(lora_scale=scale)`` compute, without PEFT.

A merged adapter changes no weight's name, shape or dtype, so the graphs of the model compiled without it
take the weights with it: an adapter is a new weights artifact, never a recompile. diffusers reads the
adapter file (``FluxPipeline.lora_state_dict``: the diffusers, Kohya and XLabs formats), this module adds
the updates to the components they target.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import FluxPipeline
from torch import nn

from model.families import UnsupportedModel
from common.adapters import Adapter
from model.sources import SourceUnavailable

# What a parsed adapter holds per adapted layer: its two factors (diffusers' names).
_DOWN, _UP = ".lora_A.weight", ".lora_B.weight"


class AdapterUnusable(UnsupportedModel):
    """An adapter that cannot be merged into this model; the message says why, in one line."""


@dataclass(frozen=True)
class Update:
    """One layer's low-rank update, already scaled: the layer's weight grows by `up @ down`."""

    up: torch.Tensor
    down: torch.Tensor


@dataclass(frozen=True)
class FetchedAdapter:
    """An adapter's file on this machine, with what its key says."""

    adapter: Adapter
    path: Path


def fetch(adapter: Adapter) -> FetchedAdapter:
    """Download an adapter's repository at its commit (its weight files only) and pick its file."""
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(repo_id=adapter.repo, revision=adapter.revision,
                                          allow_patterns=[adapter.file or "*.safetensors"]))
    except (OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SourceUnavailable(f"cannot download adapter {adapter.repo}@{adapter.revision}: {reason}") from None
    files = sorted(path.relative_to(snapshot).as_posix() for path in snapshot.rglob("*.safetensors"))
    if adapter.file is not None:
        if adapter.file not in files:
            raise AdapterUnusable(f"adapter {adapter.repo}@{adapter.revision} has no {adapter.file}")
        return FetchedAdapter(adapter, snapshot / adapter.file)
    if len(files) != 1:
        raise AdapterUnusable(f"adapter {adapter.repo}@{adapter.revision} has {len(files)} weight files "
                              f"({', '.join(files) or 'none'}): name one with file=")
    return FetchedAdapter(adapter, snapshot / files[0])


def updates(fetched: FetchedAdapter) -> dict[str, Update]:
    """The adapter's updates by the name of the weight each adds to (`<component>.<module>.weight`)."""
    # The file by its folder and name: given the file alone, diffusers guesses its name, which it refuses offline
    # (HF_HUB_OFFLINE, as when the adapter comes from a prepared cache).
    state, alphas = FluxPipeline.lora_state_dict(str(fetched.path.parent), weight_name=fetched.path.name,
                                                 return_alphas=True)
    alphas = alphas or {}
    downs = {name.removesuffix(_DOWN): tensor for name, tensor in state.items() if name.endswith(_DOWN)}
    ups = {name.removesuffix(_UP): tensor for name, tensor in state.items() if name.endswith(_UP)}
    other = sorted(set(state) - {f"{name}{_DOWN}" for name in downs} - {f"{name}{_UP}" for name in ups})
    if other or downs.keys() != ups.keys():
        unpaired = other or sorted(downs.keys() ^ ups.keys())
        raise AdapterUnusable(f"adapter {fetched.adapter.repo}: {unpaired[0]} is not a LoRA factor pair this "
                              f"project merges (only lora_A/lora_B weights)")
    merged = {}
    for layer, down in downs.items():
        rank = down.shape[0]
        # peft's scaling: alpha / rank when the adapter names an alpha, else 1; fuse_lora's scale on top.
        scale = fetched.adapter.scale * alphas.get(f"{layer}.alpha", rank) / rank
        merged[f"{layer}.weight"] = Update(up=ups[layer].float() * scale, down=down.float())
    return merged


def merge(module: nn.Module, prefix: str, adapters: list[FetchedAdapter]) -> None:
    """Add the updates of `adapters` that target `prefix` (a component: 'transformer', 'text_encoder') to
    `module`'s weights, in place; the module's state-dict names start with that prefix."""
    weights = module.state_dict(keep_vars=True)
    for fetched in adapters:
        for name, update in updates(fetched).items():
            if not name.startswith(f"{prefix}."):
                continue
            if name not in weights:
                raise AdapterUnusable(f"adapter {fetched.adapter.repo} targets {name.removesuffix('.weight')}, "
                                      f"which this model does not have")
            weight = weights[name]
            if (update.up.shape[0], update.down.shape[1]) != tuple(weight.shape):
                raise AdapterUnusable(f"adapter {fetched.adapter.repo}: its update of {name} is "
                                      f"{update.up.shape[0]}x{update.down.shape[1]}, the weight {tuple(weight.shape)}")
            with torch.no_grad():
                weight.copy_((weight.float() + update.up @ update.down).to(weight.dtype))


# The components diffusers' FluxPipeline merges LoRA adapters into (its lora_loadable_modules).
ADAPTABLE = ("transformer", "text_encoder")


def check_targets(adapters: list[FetchedAdapter]) -> None:
    """Refuse an adapter that changes a component LoRA does not reach, before any weight is loaded."""
    for fetched in adapters:
        for name in updates(fetched):
            if name.split(".", 1)[0] not in ADAPTABLE:
                raise AdapterUnusable(f"adapter {fetched.adapter.repo} targets {name.removesuffix('.weight')}: "
                                      f"only the {' and '.join(ADAPTABLE)} take adapters")
