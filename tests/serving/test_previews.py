"""Latent previews: the generator reports every step's latents, the unpacking is diffusers' own layout,
the FLUX.1 map is the published one, and previews fall at even intervals of a generation's steps."""

from __future__ import annotations

import torch
from diffusers import FluxPipeline

from common.shapes import Shape
from serving.previews import (
    FLUX1_LATENT_RGB,
    PATCH,
    VAE_SCALE,
    latent_rgb_map,
    preview,
    preview_steps,
    unpack,
)


def test_the_generator_reports_every_step_with_its_latents_and_the_image_is_unchanged(tiny_generator):
    reported = []
    image = tiny_generator.generate("a red fox", 4, 3.5, 3, on_step=lambda *step: reported.append(step))
    assert [(done, total) for done, total, _ in reported] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    shape = tiny_generator.shape
    tokens = (shape.height // (VAE_SCALE * PATCH)) * (shape.width // (VAE_SCALE * PATCH))
    assert {tuple(latents.shape[:2]) for _, _, latents in reported} == {(1, tokens)}
    assert image.tobytes() == tiny_generator.generate("a red fox", 4, 3.5, 3).tobytes()


def test_unpacking_lays_latents_out_as_diffusers_does():
    shape = Shape(height=256, width=144)
    channels = 16
    latents = torch.randn(1, (256 // 16) * (144 // 16), channels * 4)
    theirs = FluxPipeline._unpack_latents(latents, shape.height, shape.width, VAE_SCALE)  # (1, C, H/8, W/8)
    assert torch.equal(unpack(latents, shape), theirs[0].permute(1, 2, 0))


def test_a_preview_is_the_linear_map_of_each_latent_pixel_at_an_eighth_of_the_size():
    shape = Shape(height=128, width=96)
    latents = torch.randn(1, (128 // 16) * (96 // 16), 16 * 4)
    image = preview(latents, shape)
    assert image.size == (96 // VAE_SCALE, 128 // VAE_SCALE) and image.mode == "RGB"
    rgb_map, bias = latent_rgb_map(16)
    assert torch.equal(rgb_map, torch.tensor(FLUX1_LATENT_RGB))
    pixel = unpack(latents, shape)[3, 5] @ rgb_map + bias
    expected = ((pixel + 1) * 127.5).clamp(0, 255).to(torch.uint8).tolist()
    assert list(image.getpixel((5, 3))) == expected


def test_a_latent_space_without_a_published_map_gets_a_false_colour_one():
    rgb_map, bias = latent_rgb_map(4)
    assert rgb_map.tolist() == [[0.75, 0, 0], [0, 0.75, 0], [0, 0, 0.75], [0.75, 0, 0]]
    assert bias.tolist() == [0, 0, 0]


def test_previews_fall_at_even_intervals_and_never_on_the_last_step():
    assert preview_steps(28, 3) == {7: 0, 14: 1, 21: 2}
    assert preview_steps(28, 1) == {14: 0}
    assert preview_steps(12, 2) == {4: 0, 8: 1}
    assert preview_steps(28, 0) == {}
    # Too few steps for all of them: fewer previews, as OpenAI allows.
    assert preview_steps(2, 3) == {1: 0}
    assert preview_steps(1, 3) == {}
