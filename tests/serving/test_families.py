"""Each FLUX.1 family's requests against a real uvicorn: the steps' and the guidance's defaults and bounds, and the
refusal of guidance by a model that has none, follow the served model's family (model/families.py), in
/openapi.json as in the answers; /v1/models (read by the official `openai` SDK), the info metric and the request
log name the model, its family and its adapters. The tiny models are tests/serving/conftest.py's: the dev-like one
of the whole suite, and the family's tiny schnell and tiny dev with a tiny LoRA (`published_family`)."""

from __future__ import annotations

import dataclasses
import json
import logging

import httpx
import openai
import pytest

from common import endpoints
from model.families import GUIDANCE_DISTILLED, MIN_STEPS, TIMESTEP_DISTILLED
from serving.app import ServerLimits
from serving.schemas import GUIDANCE_FIELDS, MIN_GUIDANCE_SCALE

from .conftest import ADAPTER, CLIENT_TIMEOUT_S, server_sent_events

LIMITS = ServerLimits(queue_size=4, request_timeout=120)


@pytest.fixture(scope="module")
def dev(serve_tiny_artifact):
    with serve_tiny_artifact(LIMITS) as server:
        yield server


@pytest.fixture(scope="module")
def schnell(serve_published, published_family):
    with serve_published(published_family.schnell, LIMITS) as server:
        yield server


@pytest.fixture(scope="module")
def adapted(serve_published, published_family):
    with serve_published(published_family.adapted, LIMITS) as server:
        yield server


@pytest.fixture(params=[GUIDANCE_DISTILLED, TIMESTEP_DISTILLED], ids=lambda family: family.name)
def family_and_server(request):
    """Each family with the server of its tiny model."""
    server = request.getfixturevalue("dev" if request.param.guidance else "schnell")
    return request.param, server


def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_the_schema_states_the_family_s_steps_quality_and_guidance(family_and_server):
    family, server = family_and_server
    schemas = server.client.get(endpoints.OPENAPI).json()["components"]["schemas"]
    native, openai_body = schemas["GenerateRequest"]["properties"], schemas["ImagesGenerationRequest"]["properties"]
    steps = native["num_inference_steps"]
    assert (steps["minimum"], steps["maximum"], steps["default"]) == (MIN_STEPS, family.max_steps, family.default_steps)
    assert "num_inference_steps" not in schemas["GenerateRequest"].get("required", [])
    assert openai_body["quality"]["anyOf"][0]["enum"] == list(family.quality_steps)
    for body in (native, openai_body):
        if family.guidance:
            guidance = body["guidance_scale"]
            assert (guidance["minimum"], guidance["maximum"], guidance["default"]) == (
                MIN_GUIDANCE_SCALE, family.max_guidance, family.default_guidance)
        else:
            assert not set(GUIDANCE_FIELDS) & set(body), "a model without guidance lists no guidance field"
    # Neither body takes a field it does not list.
    assert schemas["GenerateRequest"]["additionalProperties"] is False
    assert schemas["ImagesGenerationRequest"]["additionalProperties"] is False


def progress_steps(server, **body) -> set[int]:
    payload = {"prompt": "a red fox", "stream": True, "seed": 1, **body}
    with httpx.stream("POST", server.url + endpoints.GENERATE, json=payload, timeout=CLIENT_TIMEOUT_S) as response:
        assert response.status_code == 200
        events = [(name, json.loads(data)) for name, data in server_sent_events(response.iter_lines()) if name]
    assert events[-1][0] == "completed"
    return {data["steps"] for name, data in events if name == "progress"}


def test_steps_default_to_the_family_s_and_quality_maps_to_its_steps(family_and_server, caplog):
    family, server = family_and_server
    assert progress_steps(server) == {family.default_steps}
    with caplog.at_level(logging.INFO, logger="serving.requests"):
        for quality in ("low", "medium", "high"):
            assert server.client.post(endpoints.OPENAI_IMAGES, json={
                "prompt": "a fox", "quality": quality, "user": f"quality-{quality}"}).status_code == 200
    steps = {record.fields["user"]: record.fields["steps"] for record in caplog.records if "user" in record.fields}
    assert steps == {f"quality-{quality}": family.quality_steps[quality] for quality in ("low", "medium", "high")}


def test_steps_beyond_the_family_s_are_a_400(family_and_server):
    family, server = family_and_server
    response = server.client.post(endpoints.GENERATE, json={"prompt": "a fox", "num_inference_steps": family.max_steps + 1})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        f"num_inference_steps: Input should be less than or equal to {family.max_steps}")


NO_GUIDANCE = ("{field}: tiny-schnell is timestep-distilled: it has no guidance embedding, so it takes no {field}")


@pytest.mark.parametrize("value", [3.5, 0, None])
def test_guidance_on_a_model_without_it_is_a_400_naming_the_model_and_why(schnell, value):
    response = schnell.client.post(endpoints.GENERATE, json={"prompt": "a fox", "guidance_scale": value})
    assert response.status_code == 400
    assert response.json()["error"] == {"message": NO_GUIDANCE.format(field="guidance_scale"),
                                        "type": "invalid_request_error", "param": "guidance_scale",
                                        "code": "invalid_value"}
    with sdk(schnell) as client:
        for field in GUIDANCE_FIELDS:
            with pytest.raises(openai.BadRequestError) as refused:
                client.images.generate(prompt="a fox", extra_body={field: value})
            assert (refused.value.param, refused.value.body["message"]) == (field, NO_GUIDANCE.format(field=field))


def test_a_guidance_distilled_model_takes_guidance_on_both_routes(dev):
    steps = GUIDANCE_DISTILLED.quality_steps["low"]
    native = dev.client.post(endpoints.GENERATE, json={
        "prompt": "a fox", "num_inference_steps": steps, "guidance_scale": 1.5, "seed": 4}).json()["image"]
    with sdk(dev) as client:
        guided = client.images.generate(prompt="a fox", quality="low", extra_body={"seed": 4, "guidance_scale": 1.5})
        default = client.images.generate(prompt="a fox", quality="low", extra_body={"seed": 4})
        with pytest.raises(openai.BadRequestError) as refused:
            client.images.generate(prompt="a fox", extra_body={"guidance_scale": GUIDANCE_DISTILLED.max_guidance + 1})
    assert guided.data[0].b64_json == native, "the same settings give the same image on either route"
    assert default.data[0].b64_json != native, f"the default guidance is {GUIDANCE_DISTILLED.default_guidance}, not 1.5"
    assert refused.value.param == "guidance_scale"


def test_models_names_the_model_at_its_revision_its_family_and_its_adapters(schnell, adapted, published_family):
    for server, options, family, adapters in (
        (schnell, published_family.schnell, TIMESTEP_DISTILLED, []),
        (adapted, published_family.adapted, GUIDANCE_DISTILLED, [ADAPTER.key()]),
    ):
        with sdk(server) as client:
            (card,) = client.models.list().data
        assert card.id == f"{options.model}@tiny-2"
        assert card.model_extra["family"] == dataclasses.asdict(family)
        assert card.model_extra["adapters"] == adapters


def test_the_info_metric_names_the_family_the_weights_and_the_adapters(schnell, adapted, published_family):
    for server, options, family, adapters in (
        (schnell, published_family.schnell, TIMESTEP_DISTILLED, ""),
        (adapted, published_family.adapted, GUIDANCE_DISTILLED,
         f"id={ADAPTER.repo},revision={ADAPTER.revision},scale={ADAPTER.scale}"),
    ):
        served = published_family.served(options)
        labels = {"model": options.model, "revision": "tiny-2", "shape": str(options.shape), "backend": "cpu",
                  "artifact": published_family.graphs(options).name, "family": family.name,
                  "weights": published_family.weights(options).name, "adapters": adapters}
        assert served.weights == labels["weights"]
        assert server.metric("flux_server_info", **labels) == 1
