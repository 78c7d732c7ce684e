"""Request and response bodies of the serving API, with the limits they enforce.

Models are strict: ``"10"`` or ``10.0`` is not an integer step count and ``true`` is
not a seed, so a client bug surfaces as a 422 instead of a silently coerced value.
Unknown fields are rejected too, so a misspelt option (``steps``) is not ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

# A guard against oversized bodies, far above what the text encoders read (the model
# truncates prompts to the artifact's max text length in tokens).
MAX_PROMPT_CHARS = 2000
MIN_STEPS = 1
MAX_STEPS = 100
# FLUX.1-dev's defaults in diffusers.
DEFAULT_STEPS = 28
DEFAULT_GUIDANCE_SCALE = 3.5
MAX_GUIDANCE_SCALE = 20.0
MAX_SEED = 2**32 - 1


def _has_text(prompt: str) -> str:
    if not prompt.strip():
        raise PydanticCustomError("blank_prompt", "prompt must contain non-whitespace text")
    return prompt


Prompt = Annotated[
    str,
    Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="What to draw."),
    AfterValidator(_has_text),
]
Seed = Annotated[
    int | None,
    Field(
        ge=0,
        le=MAX_SEED,
        description="0..2**32-1: the same seed, prompt and settings give the same image. Random when absent.",
    ),
]


class _StrictBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class GenerateRequest(_StrictBody):
    prompt: Prompt
    num_inference_steps: int = Field(ge=MIN_STEPS, le=MAX_STEPS, description="Denoising steps.")
    guidance_scale: float = Field(
        DEFAULT_GUIDANCE_SCALE,
        ge=0.0,
        le=MAX_GUIDANCE_SCALE,
        allow_inf_nan=False,
        description="FLUX.1-dev's distilled guidance.",
    )
    seed: Seed = None


class GenerateResponse(BaseModel):
    image: str = Field(description="The image as a base64-encoded PNG.")
    execution_time: float = Field(description="Seconds spent generating, excluding queueing and encoding.")
    seed: int = Field(description="The seed used, to reproduce the image.")


class ImagesGenerationRequest(_StrictBody):
    """The subset of OpenAI's ``POST /v1/images/generations`` this server honours."""

    prompt: Prompt
    model: str | None = Field(None, description="Accepted for client compatibility and ignored: one model per server.")
    n: Literal[1] = Field(1, description="Only 1: one image per request.")
    size: str | None = Field(
        None,
        description="The served shape exactly as 'HxW' (height first, unlike OpenAI's 'WxH'). Defaults to it.",
    )
    response_format: Literal["b64_json"] = "b64_json"
    seed: Seed = None


class ImageData(BaseModel):
    b64_json: str


class ImagesResponse(BaseModel):
    created: int = Field(description="Unix time of the response.")
    data: list[ImageData]
