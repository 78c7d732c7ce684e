"""The HTTP API against a real uvicorn serving the tiny compiled artifacts."""

from __future__ import annotations

import base64

import pytest

from common.shapes import Shape
from common import endpoints
from serving.app import ServerLimits
from serving.schemas import MAX_PROMPT_CHARS, MAX_SEED


@pytest.fixture(scope="module")
def api(serve_tiny_artifact):
    with serve_tiny_artifact(ServerLimits(queue_size=4, request_timeout=120)) as server:
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
    docs = api.client.get(endpoints.DOCS)
    assert docs.status_code == 200 and "static/docs.js" in docs.text
    assert "http" not in docs.text, "no asset from another host: /docs works offline"
    paths = api.client.get(endpoints.OPENAPI).json()["paths"]
    assert {
        endpoints.GENERATE,
        endpoints.OPENAI_IMAGES,
        endpoints.OPENAI_MODELS,
        endpoints.HEALTHZ,
        endpoints.READYZ,
        endpoints.METRICS,
    } <= set(paths)


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


GOOD = {"prompt": "a red fox", "num_inference_steps": 2}


@pytest.mark.parametrize(
    "body, field, message",
    [
        ({"num_inference_steps": 2}, "prompt", "Field required"),
        ({**GOOD, "prompt": ""}, "prompt", "at least 1 character"),
        ({**GOOD, "prompt": " \n\t"}, "prompt", "prompt: must contain non-whitespace text"),
        ({**GOOD, "prompt": "x" * (MAX_PROMPT_CHARS + 1)}, "prompt", f"at most {MAX_PROMPT_CHARS} characters"),
        ({**GOOD, "prompt": ["a", "fox"]}, "prompt", "valid string"),
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
        ({**GOOD, "steps": 10}, "steps", "unrecognized request argument 'steps'"),
    ],
)
def test_invalid_generate_bodies_are_400_naming_the_field(api, body, field, message):
    response = api.client.post(endpoints.GENERATE, json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == field
    assert message in error["message"], error


def test_integral_floats_are_integers_as_in_json_schema(api):
    response = generate(api, num_inference_steps=2.0, seed=7.0)
    assert response.status_code == 200, response.text
    assert response.json()["seed"] == 7


def test_metrics_count_requests_by_route_and_status(api):
    before = api.metric("flux_http_requests_total", route=endpoints.GENERATE, status="200")
    rejected_before = api.metric("flux_http_requests_total", route=endpoints.GENERATE, status="400")
    assert generate(api).status_code == 200
    assert generate(api, seed=-1).status_code == 400
    assert api.metric("flux_http_requests_total", route=endpoints.GENERATE, status="200") == before + 1
    assert api.metric("flux_http_requests_total", route=endpoints.GENERATE, status="400") == rejected_before + 1
    duration = "flux_http_request_duration_seconds_count"
    assert api.metric(duration, route=endpoints.GENERATE, status_class="2xx") >= before + 1
    assert api.metric(duration, route=endpoints.GENERATE, status_class="4xx") >= rejected_before + 1
    assert api.metric("flux_queue_depth") == 0
    assert api.metric("flux_generations_in_flight") == 0
    api.client.get("/no/such/path")
    assert api.metric("flux_http_requests_total", route="unmatched", status="404") >= 1
    api.client.get(endpoints.OPENAPI)
    assert api.metric("flux_http_requests_total", route=endpoints.OPENAPI, status="200") >= 1
