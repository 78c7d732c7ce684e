"""Request and response bodies of the serving API, with the limits they enforce.

Models are strict: ``"10"`` is not an integer step count and ``true`` is not a seed, so a
client bug surfaces as a 400 instead of a silently coerced value. A float with an integral
value (``66.0``) is an integer, as JSON Schema says. Unknown fields are rejected too, so a
misspelt option (``steps``) is not ignored.

Every rule is one the OpenAPI document states (patterns, enums, bounds), so what the schema
calls valid the server accepts: the request models are built per server, for its model's family
(steps, guidance, quality: model/families.py), its shape and its maximum ``n``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, create_model
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from common.shapes import Shape
from model.families import MIN_STEPS, Family
from serving.previews import MAX_PARTIAL_IMAGES

# A guard against oversized bodies, far above what the text encoders read (the model
# truncates prompts to the artifact's max text length in tokens).
MAX_PROMPT_CHARS = 2000
MIN_GUIDANCE_SCALE = 0.0
MAX_SEED = 2**32 - 1
# The fields a client may set guidance with: this API's, and the name other FLUX APIs give it. A model without a
# guidance embedding refuses them by name, saying why, rather than as unknown fields.
GUIDANCE_FIELDS = ("guidance_scale", "guidance")
MAX_USER_CHARS = 256


def _non_blank_pattern() -> str:
    """A pattern for "contains a character that is not whitespace", meaning the same to the server (Python's
    ``re``) and to JSON Schema validators (ECMA-262 regexes). ``\\S`` does not: Python's whitespace includes
    U+001C-U+001F and U+0085, ECMA-262's does not, and ECMA-262's includes U+FEFF, Python's does not.
    So the whitespace is listed: every character either dialect calls whitespace, as ``\\uXXXX`` escapes
    in one negated class, which both read alike (all of them are in the Basic Multilingual Plane)."""
    blank = sorted({code for code in range(0x10000) if chr(code).isspace()} | {0xFEFF})
    ranges: list[list[int]] = []
    for code in blank:
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    listed = "".join(f"\\u{low:04x}" if low == high else f"\\u{low:04x}-\\u{high:04x}" for low, high in ranges)
    return f"[^{listed}]"


NON_BLANK_PATTERN = _non_blank_pattern()

OUTPUT_FORMATS = ("png", "jpeg", "webp")
DEFAULT_OUTPUT_COMPRESSION = 100
AUTO_SIZE = "auto"


def _integral_float_as_int(value: object) -> object:
    """``66.0`` is the integer 66 (JSON Schema's definition); ``66.5`` stays a float and is refused."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _integer(**constraints) -> object:
    # The validator last, so it wraps (runs before) the strict int and its bounds.
    return Annotated[int, Field(**constraints), BeforeValidator(_integral_float_as_int)]


Stream = Annotated[
    StrictBool,
    Field(description="Server-sent events instead of one JSON answer (docs/serving.md, Streaming)."),
]
PartialImages = Annotated[
    _integer(ge=0, le=MAX_PARTIAL_IMAGES),
    Field(description=f"With stream: previews per image, 0 to {MAX_PARTIAL_IMAGES}, at even intervals of its steps "
                      "(latent previews at 1/8 of the size, no VAE); without stream, ignored."),
]

Prompt = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        pattern=NON_BLANK_PATTERN,
        description="What to draw: 1 to 2000 characters, not only whitespace.",
    ),
]
Seed = Annotated[
    _integer(
        ge=0,
        le=MAX_SEED,
        description="0..2**32-1: the same seed, prompt and settings give the same image. Random when absent.",
    )
    | None,
    Field(),
]


class _StrictBody(BaseModel):
    # python-re: patterns mean what they mean in Python, as for the JSON Schema validators clients use.
    model_config = ConfigDict(strict=True, extra="forbid", regex_engine="python-re")


def _steps(family: Family) -> tuple[object, object]:
    return (
        _integer(ge=MIN_STEPS, le=family.max_steps),
        Field(family.default_steps, description=f"Denoising steps, {MIN_STEPS} to {family.max_steps}: {family.name} "
                                                f"models default to {family.default_steps}."),
    )


def _guidance(model: str, family: Family) -> dict[str, tuple[object, object]]:
    """The guidance field of a guidance-distilled model; for one without a guidance embedding, fields that refuse
    any value (even null), absent from the schema (which allows no field it does not list)."""
    if family.guidance:
        return {"guidance_scale": (
            float,
            Field(family.default_guidance, ge=MIN_GUIDANCE_SCALE, le=family.max_guidance, allow_inf_nan=False,
                  description=f"The distilled guidance of {family.name} models, {MIN_GUIDANCE_SCALE:g} to "
                              f"{family.max_guidance:g}; default {family.default_guidance:g}."),
        )}

    def refuse(_: object, field) -> None:
        raise PydanticCustomError(
            "no_guidance", "{model} is {family}: it has no guidance embedding, so it takes no {field}",
            {"model": model, "family": family.name, "field": field.field_name})

    return {name: (SkipJsonSchema[Annotated[Any, BeforeValidator(refuse)]], None) for name in GUIDANCE_FIELDS}


def generate_request_model(model: str, family: Family) -> type[BaseModel]:
    """``POST /generate``'s body, as a server of this model (its family's steps and guidance) accepts it."""
    return create_model(
        "GenerateRequest",
        __base__=_StrictBody,
        prompt=(Prompt, ...),
        num_inference_steps=_steps(family),
        **_guidance(model, family),
        seed=(Seed, None),
        stream=(Stream, False),
        partial_images=(PartialImages, 0),
    )


class GenerateResponse(BaseModel):
    image: str = Field(description="The image as a base64-encoded PNG.")
    execution_time: float = Field(description="Seconds spent generating, excluding queueing and encoding.")
    seed: int = Field(description="The seed used, to reproduce the image.")


def openai_size(shape: Shape) -> str:
    """OpenAI writes sizes width first: a 1024x576 (HxW) shape is OpenAI's "576x1024"."""
    return f"{shape.width}x{shape.height}"


def images_request_model(shape: Shape, max_images: int, model: str, family: Family) -> type[BaseModel]:
    """OpenAI's ``POST /v1/images/generations`` body, as this server (its shape, its max n, its model's family)
    accepts it."""
    size = openai_size(shape)
    return create_model(
        "ImagesGenerationRequest",
        __base__=_StrictBody,
        __doc__="OpenAI's images API body. Fields it defines that mean nothing for FLUX are accepted and ignored.",
        prompt=(Prompt, ...),
        model=(str | None, Field(None, max_length=256, description="Accepted and ignored: one model per server.")),
        n=(
            _integer(ge=1, le=max_images) | None,
            Field(1, description=f"Images to generate, 1 to {max_images}, one after another, seeds seed, seed+1, ..."),
        ),
        size=(
            Literal[size, AUTO_SIZE] | None,  # type: ignore[valid-type]
            Field(None, description=f"OpenAI's WIDTHxHEIGHT: '{size}' (the served shape) or 'auto'; default it."),
        ),
        quality=(
            Literal[tuple(family.quality_steps)] | None,  # type: ignore[valid-type]
            Field(None, description=f"Denoising steps: {family.quality_steps}. Default auto."),
        ),
        response_format=(
            Literal["b64_json", "url"] | None,
            Field(None, description="b64_json (default), or url: a data: URL holding the same image."),
        ),
        output_format=(
            Literal[OUTPUT_FORMATS] | None,  # type: ignore[valid-type]
            Field(None, description="png (default), jpeg or webp."),
        ),
        output_compression=(
            _integer(ge=0, le=100) | None,
            Field(None, description="0..100: jpeg and webp quality (png is lossless: ignored). Default 100."),
        ),
        background=(
            Literal["auto", "opaque"] | None,
            Field(None, description="FLUX draws opaque images: 'transparent' is refused."),
        ),
        style=(Literal["vivid", "natural"] | None, Field(None, description="DALL-E 3's; ignored by FLUX.")),
        moderation=(Literal["auto", "low"] | None, Field(None, description="Accepted and ignored.")),
        stream=(Stream | None, None),
        partial_images=(PartialImages | None, None),
        user=(
            str | None,
            Field(None, max_length=MAX_USER_CHARS, description="An end-user id; written to the request's log line."),
        ),
        safety_identifier=(
            str | None,
            Field(None, max_length=MAX_USER_CHARS, description="Like user: written to the request's log line."),
        ),
        seed=(Seed, None),
        **_guidance(model, family),
    )


class ImageData(BaseModel):
    b64_json: str | None = Field(None, description="The image, base64-encoded (response_format b64_json).")
    url: str | None = Field(None, description="The image as a data: URL (response_format url).")
    seed: int = Field(description="Extension: the seed of this image.")


class ImagesResponse(BaseModel):
    created: int = Field(description="Unix time of the response.")
    data: list[ImageData]
    size: str = Field(description="WIDTHxHEIGHT of the images.")
    quality: str
    output_format: str
    background: Literal["opaque"] = "opaque"


class AdapterCard(BaseModel):
    """A LoRA adapter merged into the served weights, as ``--lora`` names it."""

    id: str = Field(description="Its HuggingFace repository.")
    revision: str = Field(description="The commit it was read at.")
    file: str | None = Field(description="Its weights file, when the repository holds several.")
    scale: float = Field(description="The scale its update was added with.")


class ModelCard(BaseModel):
    id: str = Field(description="The model at its revision: <model>@<revision>.")
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time the artifact was compiled.")
    owned_by: str = Field(description="The model's HuggingFace organisation; this project's for its tiny models.")
    size: str = Field(description="Extension: the one size served, OpenAI's WIDTHxHEIGHT.")
    shape: str = Field(description="Extension: the same shape as HEIGHTxWIDTH, as in the stack config.")
    family: Family = Field(description="Extension: the model's FLUX.1 family, what requests may ask of it (steps, "
                                       "guidance, quality as steps, T5 tokens).")
    adapters: list[AdapterCard] = Field(description="Extension: the LoRA adapters merged into the served weights, "
                                                    "in order.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error, on every route, in OpenAI's shape."""

    error: ErrorDetail


# The events of a streamed generation (serving/streaming.py): each one's data, by event name.


class QueuedEvent(BaseModel):
    position: int = Field(ge=1, description="The request's place among the waiting ones: 1 runs next.")


class ProgressEvent(BaseModel):
    step: int = Field(ge=0, description="Denoising steps done: 0 when the generation starts.")
    steps: int = Field(ge=1, description="Its denoising steps in all.")
    partial_image_index: int | None = Field(None, description="With a preview: which one, 0-based.")
    image: str | None = Field(None, description="A preview after this step: a base64 PNG at 1/8 of the size.")


class StreamErrorEvent(ErrorResponse):
    type: Literal["error"] = "error"


class ImageEvent(BaseModel):
    b64_json: str = Field(description="The image (or preview), base64-encoded in output_format.")
    created_at: int = Field(description="Unix time of the event.")
    size: str
    quality: str
    background: Literal["opaque"] = "opaque"
    output_format: str
    seed: int = Field(description="Extension: the seed of this image.")


class PartialImageEvent(ImageEvent):
    type: Literal["image_generation.partial_image"] = "image_generation.partial_image"
    partial_image_index: int = Field(ge=0, description="0-based, per image.")


class TokenDetails(BaseModel):
    image_tokens: int = 0
    text_tokens: int = 0


class Usage(BaseModel):
    """The GPT image models' token counts: FLUX counts no tokens, so all zero."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_tokens_details: TokenDetails = TokenDetails()


class CompletedImageEvent(ImageEvent):
    type: Literal["image_generation.completed"] = "image_generation.completed"
    usage: Usage = Usage()


GENERATE_EVENTS: dict[str, type[BaseModel]] = {
    "queued": QueuedEvent, "progress": ProgressEvent, "completed": GenerateResponse, "error": ErrorResponse,
}
OPENAI_IMAGE_EVENTS: dict[str, type[BaseModel]] = {
    "image_generation.partial_image": PartialImageEvent, "image_generation.completed": CompletedImageEvent,
    "error": StreamErrorEvent,
}


def _inlined(schema: dict) -> dict:
    """A model's JSON schema with its $defs written in place: an event's contentSchema stands alone."""
    definitions = schema.pop("$defs", {})

    def inline(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return inline(schema)


def event_stream_schema(events: dict[str, type[BaseModel]]) -> dict:
    """The schema of each event of a text/event-stream: its name, and its data as JSON of that event's model."""
    return {"oneOf": [
        {"type": "object", "required": ["event", "data"], "properties": {
            "event": {"const": name},
            "data": {"type": "string", "contentMediaType": "application/json",
                     "contentSchema": _inlined(model.model_json_schema(mode="serialization"))}}}
        for name, model in events.items()
    ]}
