"""The FLUX.1 families this project compiles and serves, told apart by a model's own configs.

- **Guidance-distilled** (FLUX.1-dev and its derivatives, e.g. FLUX.1-Krea-dev): the transformer takes
  a guidance embedding, the scheduler shifts by image size (dynamic shifting); about 28 steps.
- **Timestep-distilled** (FLUX.1-schnell): no guidance embedding, a fixed-shift scheduler, 1-4 steps,
  and T5 prompts of at most 256 tokens (what it was distilled with: Black Forest Labs' reference
  code and model card).

Which one a model is comes from its transformer and scheduler configs (model/build.py records it in the
artifact); the numbers below are each family's facts, what serving's defaults and bounds are made of.
Anything else (image-conditioned variants such as Fill or Depth, other pipelines) is refused with one
line naming what it lacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The pipeline class of a text-to-image FLUX.1 snapshot (its model_index.json).
FLUX_PIPELINE = "FluxPipeline"
# Text-to-image FLUX.1's transformer reads the VAE's latent channels in 2x2 patches (FLUX.1-dev: 16 -> 64);
# Fill, Depth and Canny variants take image conditioning on top (in_channels 384 or 128).
LATENT_PATCH_AREA = 4
MIN_STEPS = 1


class UnsupportedModel(ValueError):
    """A model this project cannot compile; the message names what it lacks, in one line."""


@dataclass(frozen=True)
class Family:
    name: str
    guidance: bool            # the transformer takes a guidance embedding, so requests may set guidance
    max_text_length: int      # T5 tokens
    default_steps: int
    max_steps: int
    default_guidance: float | None
    max_guidance: float | None
    # OpenAI's `quality` as denoising steps ("standard"/"hd" are DALL-E 3's names).
    quality_steps: dict[str, int] = field(default_factory=dict)


GUIDANCE_DISTILLED = Family(
    name="guidance-distilled", guidance=True, max_text_length=512,
    # diffusers' FluxPipeline defaults; FLUX.1-dev is distilled for about 28 steps, 50 is the upper end its
    # model card suggests.
    default_steps=28, max_steps=100, default_guidance=3.5, max_guidance=20.0,
    quality_steps={"low": 12, "medium": 20, "high": 28, "auto": 28, "standard": 28, "xhigh": 40, "hd": 50, "max": 50},
)
TIMESTEP_DISTILLED = Family(
    name="timestep-distilled", guidance=False, max_text_length=256,
    default_steps=4, max_steps=4, default_guidance=None, max_guidance=None,
    quality_steps={"low": 1, "medium": 2, "high": 4, "auto": 4, "standard": 4, "xhigh": 4, "hd": 4, "max": 4},
)
FAMILIES = {family.name: family for family in (GUIDANCE_DISTILLED, TIMESTEP_DISTILLED)}


def family_of(model: str, pipeline_class: str, transformer_config: dict, vae_config: dict,
              scheduler_config: dict) -> Family:
    """The family a model's configs describe; UnsupportedModel naming what is missing otherwise."""
    if pipeline_class != FLUX_PIPELINE:
        raise UnsupportedModel(f"{model} is a {pipeline_class}, not a text-to-image {FLUX_PIPELINE}")
    latent_patches = LATENT_PATCH_AREA * vae_config["latent_channels"]
    if transformer_config.get("in_channels") != latent_patches:
        raise UnsupportedModel(
            f"{model}'s transformer takes {transformer_config.get('in_channels')} input channels, not the "
            f"{latent_patches} of its VAE's latent patches: an image-conditioned variant, not text-to-image")
    if transformer_config.get("guidance_embeds"):
        return GUIDANCE_DISTILLED
    if scheduler_config.get("use_dynamic_shifting") is False:
        return TIMESTEP_DISTILLED
    raise UnsupportedModel(
        f"{model} has neither a guidance embedding (FLUX.1-dev's family) nor a fixed-shift scheduler "
        f"(FLUX.1-schnell's): no FLUX.1 family this project serves")
