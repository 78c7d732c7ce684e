"""The OpenAI images API as the official ``openai`` SDK sends it, against a real uvicorn."""

from __future__ import annotations

import base64
import io

import openai
import pytest
from PIL import Image

from serving.app import DEFAULT_MAX_IMAGES, ServerLimits
from serving.schemas import openai_size


@pytest.fixture(scope="module")
def server(serve_tiny_artifact):
    with serve_tiny_artifact(ServerLimits(queue_size=4, request_timeout=120)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    # max_retries=0: a test sees the first answer, not a retried one.
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def size(served) -> str:
    return openai_size(served.shape)


def decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))


def test_width_x_height_gives_an_image_of_that_width_and_height(client, served, size):
    width, height = (int(side) for side in size.split("x"))
    assert (width, height) == (served.shape.width, served.shape.height)
    assert width != height, "a square shape would not catch a swap"
    for asked in (size, "auto", None):
        extra = {} if asked is None else {"size": asked}
        result = client.images.generate(prompt="a red fox", quality="low", **extra)
        (image,) = result.data
        # The default response_format is b64_json, as for the gpt-image models.
        assert image.b64_json is not None and image.url is None
        picture = decoded(image.b64_json)
        assert (picture.format, picture.size) == ("PNG", (width, height))
        assert result.size == size


def test_the_other_orientation_is_a_bad_request_naming_the_size(client, served, size):
    swapped = f"{served.shape.height}x{served.shape.width}"
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(prompt="a red fox", size=swapped)
    assert refused.value.status_code == 400
    assert refused.value.param == "size"
    assert f"'{size}'" in refused.value.message


def test_n_images_each_with_its_own_seed(client):
    result = client.images.generate(prompt="a red fox", n=3, quality="low", extra_body={"seed": 41})
    seeds = [image.model_extra["seed"] for image in result.data]
    assert seeds == [41, 42, 43]
    assert len({image.b64_json for image in result.data}) == 3
    again = client.images.generate(prompt="a red fox", quality="low", extra_body={"seed": 42})
    assert again.data[0].b64_json == result.data[1].b64_json


def test_url_is_a_data_url_and_output_formats_encode_as_asked(client, size):
    width, height = (int(side) for side in size.split("x"))
    for output_format, pillow_format in (("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")):
        result = client.images.generate(
            prompt="a red fox",
            quality="low",
            response_format="url",
            output_format=output_format,
            output_compression=60,
        )
        (image,) = result.data
        prefix = f"data:image/{output_format};base64,"
        assert image.url.startswith(prefix) and image.b64_json is None
        picture = decoded(image.url[len(prefix) :])
        assert (picture.format, picture.size) == (pillow_format, (width, height))
        assert result.output_format == output_format


@pytest.mark.parametrize("output_format", ["jpeg", "webp"])
def test_output_compression_zero_is_the_lowest_quality_not_the_default(client, output_format):
    def encoded(compression: int | None) -> bytes:
        extra = {} if compression is None else {"output_compression": compression}
        result = client.images.generate(prompt="a red fox", quality="low", output_format=output_format,
                                        extra_body={"seed": 3}, **extra)
        return base64.b64decode(result.data[0].b64_json)

    lowest, highest, default = encoded(0), encoded(100), encoded(None)
    assert default == highest
    assert len(lowest) < len(encoded(50)) < len(highest)


def test_openai_parameters_without_meaning_for_flux_are_accepted(client):
    result = client.images.generate(
        prompt="a red fox",
        model="flux",
        n=None,
        quality="low",
        style="natural",
        user="user-1234",
        background="opaque",
        moderation="auto",
    )
    assert len(result.data) == 1


@pytest.mark.parametrize(
    "arguments, param, message",
    [
        ({"n": DEFAULT_MAX_IMAGES + 1}, "n", f"less than or equal to {DEFAULT_MAX_IMAGES}"),
        ({"background": "transparent"}, "background", "'auto' or 'opaque'"),
        ({"quality": "ultra"}, "quality", "Input should be"),
        ({"output_format": "gif"}, "output_format", "'png', 'jpeg' or 'webp'"),
        ({"output_compression": 101}, "output_compression", "less than or equal to 100"),
        ({"partial_images": 4}, "partial_images", "less than or equal to 3"),
        ({"extra_body": {"steps": 3}}, "steps", "unrecognized request argument 'steps'"),
        ({"prompt": " "}, "prompt", "must contain non-whitespace text"),
    ],
)
def test_bad_parameters_raise_bad_request_with_a_readable_message(client, arguments, param, message):
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(**{"prompt": "a red fox", **arguments})
    assert refused.value.param == param
    assert message in refused.value.message
    assert refused.value.body["type"] == "invalid_request_error"


def test_models_names_the_served_model_and_shape(client, served, size):
    (card,) = client.models.list().data
    assert card.id == f"{served.model}@{served.revision}" == "tiny@tiny-2"
    assert card.owned_by == "flux-neuron", "the tiny models are this project's"
    assert (card.model_extra["size"], card.model_extra["shape"]) == (size, str(served.shape))
