"""Previews of an image while it is denoised: the packed latents of a step, mapped to RGB by a fixed
linear map, at the latents' resolution (one pixel per 8x8 of the image). No VAE: a preview costs a
reshape, a (pixels x channels) @ (channels x 3) product and a tiny image encode, well under 2% of a
generation (`python -m bench.previews` measures it).

The map for FLUX.1's 16 latent channels is the one ComfyUI's previews use (comfy/latent_formats.py,
class Flux: ``latent_rgb_factors`` and ``latent_rgb_factors_bias``, reproduced by stable-diffusion.cpp),
fitted to FLUX.1's VAE. It applies to the latents the pipeline denoises (scaled and shifted: ComfyUI's
"process_in" space, diffusers' too), and gives RGB in [-1, 1]. A latent space with no published map
(the tiny test model's 4 channels) gets a false-colour one: channel c drives colour c mod 3, enough to
watch the noise settle.
"""

from __future__ import annotations

import functools

import torch
from PIL import Image

from common.shapes import Shape

# FLUX.1's VAE: 16 channels -> (R, G, B), and the bias.
FLUX1_LATENT_RGB = (
    (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433), (-0.0174, 0.0160, 0.0617),
    (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115), (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259),
    (-0.0245, 0.0250, 0.1180), (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499), (-0.1262, -0.0982, -0.0778),
)
FLUX1_LATENT_RGB_BIAS = (-0.0329, -0.0718, -0.0851)
# FluxPipeline packs 2x2 latent pixels into one token; the VAE's latents are 1/8 of the image per side.
PATCH = 2
VAE_SCALE = 8
MAX_PARTIAL_IMAGES = 3


@functools.cache
def latent_rgb_map(channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (channels x 3) map and the bias for a latent space of ``channels`` channels (built once)."""
    if channels == len(FLUX1_LATENT_RGB):
        return torch.tensor(FLUX1_LATENT_RGB), torch.tensor(FLUX1_LATENT_RGB_BIAS)
    false_colour = torch.zeros(channels, 3)
    for channel in range(channels):
        false_colour[channel, channel % 3] = 3 / channels
    return false_colour, torch.zeros(3)


def unpack(latents: torch.Tensor, shape: Shape) -> torch.Tensor:
    """Packed latents (1, tokens, channels x 4) -> (height/8, width/8, channels), as FluxPipeline._unpack_latents
    lays them out (there: channels first)."""
    rows, columns = shape.height // (VAE_SCALE * PATCH), shape.width // (VAE_SCALE * PATCH)
    channels = latents.shape[-1] // (PATCH * PATCH)
    patches = latents[0].float().view(rows, columns, channels, PATCH, PATCH)
    return patches.permute(0, 3, 1, 4, 2).reshape(rows * PATCH, columns * PATCH, channels)


def preview(latents: torch.Tensor, shape: Shape) -> Image.Image:
    """The RGB preview of a step's packed latents: (width/8) x (height/8) pixels."""
    pixels = unpack(latents, shape)
    rgb_map, bias = latent_rgb_map(pixels.shape[-1])
    rgb = pixels @ rgb_map + bias
    return Image.fromarray(((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy())


def preview_steps(steps: int, partial_images: int) -> dict[int, int]:
    """After which denoising steps the ``partial_images`` previews are taken, at even intervals, and each
    one's index (0-based): 28 steps, 3 previews -> {7: 0, 14: 1, 21: 2}. None after the last step (that
    is the image itself), so a short generation may give fewer than asked, as OpenAI's may."""
    taken = sorted({round(steps * (index + 1) / (partial_images + 1)) for index in range(partial_images)})
    return {step: index for index, step in enumerate(step for step in taken if 1 <= step < steps)}
