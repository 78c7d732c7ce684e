"""The HTTP API against a real uvicorn serving the tiny compiled artifacts."""

from __future__ import annotations

import base64
from functools import partial

import pytest

from model.runtime import load_generator
from model.shapes import Shape
from serving import endpoints
from serving.app import create_app
from serving.schemas import MAX_PROMPT_CHARS, MAX_SEED


@pytest.fixture(scope="module")
def api(serve_app, tiny_artifact_dir):
    """Loads the artifacts the way the CLI does: verified, in the background, then warmed up."""
    app = create_app(partial(load_generator, tiny_artifact_dir), queue_size=4, request_timeout=120)
    with serve_app(app) as server:
        assert server.wait_until_settled().status_code == 200
        yield server


@pytest.fixture(scope="module")
def shape(tiny_compile_options) -> Shape:
    return tiny_compile_options.shape


def generate(api, **body):
    return api.client.post(endpoints.GENERATE, json={"prompt": "a red fox", "num_inference_steps": 2, **body})


def test_probes_and_docs(api, shape):
    assert api.client.get(endpoints.HEALTHZ).json() == {"status": "alive"}
    ready = api.client.get(endpoints.READYZ)
    assert (ready.status_code, ready.json()) == (200, {"status": "ready", "shape": str(shape)})
    assert api.client.get("/docs").status_code == 200
    paths = api.client.get("/openapi.json").json()["paths"]
    assert {endpoints.GENERATE, endpoints.OPENAI_IMAGES, endpoints.HEALTHZ, endpoints.READYZ, endpoints.METRICS} <= set(
        paths
    )


def test_generate_returns_a_png_of_the_served_shape(api, shape, png_size):
    response = generate(api, seed=7, guidance_scale=2.5)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"image", "execution_time", "seed"}
    assert png_size(body["image"]) == (shape.width, shape.height)
    assert body["seed"] == 7
    assert body["execution_time"] > 0


def test_same_seed_gives_identical_png_bytes(api):
    first = generate(api).json()
    assert 0 <= first["seed"] <= MAX_SEED, "an absent seed is drawn and returned"
    again = generate(api, seed=first["seed"]).json()
    assert base64.b64decode(again["image"]) == base64.b64decode(first["image"])
    other = generate(api, seed=(first["seed"] + 1) % (MAX_SEED + 1)).json()
    assert other["image"] != first["image"]


def test_openai_images_endpoint(api, shape, png_size):
    for size in (str(shape), None):
        body = {"prompt": "a red fox", "n": 1, "response_format": "b64_json", "seed": 3, "model": "flux"}
        if size is not None:
            body["size"] = size
        response = api.client.post(endpoints.OPENAI_IMAGES, json=body)
        assert response.status_code == 200, response.text
        result = response.json()
        assert isinstance(result["created"], int)
        (image,) = result["data"]
        assert png_size(image["b64_json"]) == (shape.width, shape.height)


def test_openai_size_other_than_the_served_shape_is_422(api, shape):
    swapped = f"{shape.width}x{shape.height}"
    response = api.client.post(endpoints.OPENAI_IMAGES, json={"prompt": "a red fox", "size": swapped})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "size"]
    assert f"size must be '{shape}'" in error["msg"]


GOOD = {"prompt": "a red fox", "num_inference_steps": 2}


@pytest.mark.parametrize(
    "body, field, message",
    [
        ({"num_inference_steps": 2}, "prompt", "Field required"),
        ({**GOOD, "prompt": ""}, "prompt", "at least 1 character"),
        ({**GOOD, "prompt": " \n\t"}, "prompt", "non-whitespace"),
        ({**GOOD, "prompt": "x" * (MAX_PROMPT_CHARS + 1)}, "prompt", f"at most {MAX_PROMPT_CHARS} characters"),
        ({**GOOD, "prompt": ["a", "fox"]}, "prompt", "valid string"),
        ({"prompt": "a red fox"}, "num_inference_steps", "Field required"),
        ({**GOOD, "num_inference_steps": 0}, "num_inference_steps", "greater than or equal to 1"),
        ({**GOOD, "num_inference_steps": 101}, "num_inference_steps", "less than or equal to 100"),
        ({**GOOD, "num_inference_steps": "10"}, "num_inference_steps", "valid integer"),
        ({**GOOD, "num_inference_steps": 2.5}, "num_inference_steps", "valid integer"),
        ({**GOOD, "guidance_scale": -1}, "guidance_scale", "greater than or equal to 0"),
        ({**GOOD, "guidance_scale": 20.5}, "guidance_scale", "less than or equal to 20"),
        ({**GOOD, "guidance_scale": "high"}, "guidance_scale", "valid number"),
        ({**GOOD, "seed": -1}, "seed", "greater than or equal to 0"),
        ({**GOOD, "seed": MAX_SEED + 1}, "seed", f"less than or equal to {MAX_SEED}"),
        ({**GOOD, "seed": True}, "seed", "valid integer"),
        ({**GOOD, "steps": 10}, "steps", "Extra inputs are not permitted"),
    ],
)
def test_invalid_generate_bodies_are_422_naming_the_field(api, body, field, message):
    response = api.client.post(endpoints.GENERATE, json=body)
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert any(error["loc"] == ["body", field] and message in error["msg"] for error in errors), errors


@pytest.mark.parametrize(
    "body, field, message",
    [
        ({"prompt": "a red fox", "n": 2}, "n", "Input should be 1"),
        ({"prompt": "a red fox", "response_format": "url"}, "response_format", "'b64_json'"),
        ({"prompt": "a red fox", "quality": "hd"}, "quality", "Extra inputs are not permitted"),
        ({"prompt": "a red fox", "size": "large"}, "size", "size must be"),
    ],
)
def test_invalid_openai_bodies_are_422_naming_the_field(api, body, field, message):
    response = api.client.post(endpoints.OPENAI_IMAGES, json=body)
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert any(error["loc"] == ["body", field] and message in error["msg"] for error in errors), errors


def test_a_body_that_is_not_json_is_422(api):
    response = api.client.post(endpoints.GENERATE, content=b"prompt=fox", headers={"content-type": "application/json"})
    assert response.status_code == 422


def test_metrics_count_requests_by_route_and_status(api):
    before = api.metric("flux_http_requests_total", route=endpoints.GENERATE, status="200")
    rejected_before = api.metric("flux_http_requests_total", route=endpoints.GENERATE, status="422")
    assert generate(api).status_code == 200
    assert generate(api, seed=-1).status_code == 422
    assert api.metric("flux_http_requests_total", route=endpoints.GENERATE, status="200") == before + 1
    assert api.metric("flux_http_requests_total", route=endpoints.GENERATE, status="422") == rejected_before + 1
    assert api.metric("flux_http_request_duration_seconds_count", route=endpoints.GENERATE) >= before + 2
    assert api.metric("flux_queue_depth") == 0
    assert api.metric("flux_generations_in_flight") == 0
    api.client.get("/no/such/path")
    assert api.metric("flux_http_requests_total", route="unmatched", status="404") >= 1
