"""Image shapes and the other compile-time dimensions, defined once for infra, model and serving.

A shape is written ``HxW``: height first, then width, in pixels (``1024x576`` is
1024 pixels tall and 576 wide). Both sides must be multiples of 16 (the VAE's
factor of 8 times the transformer's 2x2 patches); diffusers would silently floor
anything else, so we refuse it instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SIDE_MULTIPLE = 16
MIN_SIDE = 64
MAX_SIDE = 2048
# FLUX.1's T5 prompt length limit (FluxPipeline refuses longer); compiled graphs fix their length.
MAX_TEXT_LENGTH = 512
# Neuron compiles bfloat16; float32 exists for CPU runs of the tiny model.
DTYPES = ("bfloat16", "float32")

_SHAPE_PATTERN = re.compile(r"^(\d+)x(\d+)$")

SHAPE_RULE = (
    f"'HxW' (height x width in pixels), each side a multiple of {SIDE_MULTIPLE} "
    f"between {MIN_SIDE} and {MAX_SIDE}, e.g. '1024x576'"
)


@dataclass(frozen=True, order=True)
class Shape:
    height: int
    width: int

    def __str__(self) -> str:
        return f"{self.height}x{self.width}"

    @property
    def image_tokens(self) -> int:
        """Sequence length of the transformer's image stream."""
        return (self.height // SIDE_MULTIPLE) * (self.width // SIDE_MULTIPLE)


def parse_shape(text: object) -> Shape:
    """Parse ``HxW``; raise ValueError saying what is allowed."""
    match = _SHAPE_PATTERN.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{text!r} is not a shape: expected {SHAPE_RULE}")
    height, width = int(match.group(1)), int(match.group(2))
    for side_name, side in (("height", height), ("width", width)):
        if side % SIDE_MULTIPLE or not MIN_SIDE <= side <= MAX_SIDE:
            raise ValueError(f"{text!r} has {side_name} {side}: expected {SHAPE_RULE}")
    return Shape(height, width)


def parse_dtype(text: object) -> str:
    if text not in DTYPES:
        raise ValueError(f"{text!r} is not a supported dtype: expected one of {', '.join(DTYPES)}")
    return text
