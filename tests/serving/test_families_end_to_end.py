"""The FLUX.1 family the deployed way: published (tests/serving/conftest.py's `published_family`: the tiny
schnell-like model, and the tiny dev-like one with a tiny LoRA adapter merged by `python -m model.compile --lora`),
then served by `python -m serving --graphs-root ROOT <the compile options>` as a real process, as a serving pod runs
it, and called with the official `openai` SDK.

The adapter comes through huggingface_hub's real `snapshot_download`, offline (`HF_HUB_OFFLINE=1`), from a
HuggingFace cache prepared in the layout the library writes (blobs, snapshot links, refs): the compile and the
server run with that environment, as pods would with a prepared cache.
"""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import openai
import pytest
from huggingface_hub import scan_cache_dir
from PIL import Image

from common import endpoints, progress
from model.families import GUIDANCE_DISTILLED, TIMESTEP_DISTILLED
from model.compile import resolve
from common.adapters import adapter_argument
from serving.app import encode
from serving.schemas import openai_size

from .conftest import (
    ADAPTER, CLIENT_TIMEOUT_S, files_under, graphs_root_argv, metric, server_process, server_sent_events,
)

PROMPT = "a lighthouse at dusk"


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def test_the_adapter_came_from_the_hub_cache_and_gave_new_weights_for_the_same_graphs(published_family):
    (repository,) = scan_cache_dir(published_family.hub_env["HF_HUB_CACHE"]).repos
    (revision,) = repository.revisions
    assert (repository.repo_id, revision.commit_hash) == (ADAPTER.repo, ADAPTER.revision)
    events = [json.loads(line) for line in published_family.adapted_compile.stderr.splitlines()]
    done = {(event["kind"], event[progress.EVENT_FIELD]) for event in events if progress.EVENT_FIELD in event}
    assert (progress.GRAPHS, progress.ALREADY_PUBLISHED) in done and (progress.WEIGHTS, progress.PUBLISHED) in done
    dev, adapted = (resolve(options, published_family.root) for options in (published_family.dev, published_family.adapted))
    assert adapted.directory == dev.directory, "the same graphs artifact"
    assert published_family.adapted_compile.stdout.splitlines()[-1] == str(dev.directory)
    assert files_under(dev.directory) == published_family.graph_files_before, "no graph file was added or changed"
    assert adapted.published and adapted.weights != dev.weights


def test_the_adapter_served_by_python_m_serving_changes_the_image_and_is_named(published_family):
    family, adapted = published_family, published_family.adapted
    with server_process(*graphs_root_argv(family.root, adapted), env=family.hub_env) as server:
        with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT_S) as client:
            server.wait_ready(client)
            # The graphs of the base model, the weights with the adapter merged.
            info = metric(client, "flux_server_info", model="tiny", revision="tiny-2", shape=str(adapted.shape),
                          backend="cpu", artifact=family.graphs(family.dev).name, family=GUIDANCE_DISTILLED.name,
                          weights=family.weights(adapted).name, adapters=adapter_argument(ADAPTER))
        with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as sdk:
            (card,) = sdk.models.list().data
            result = sdk.images.generate(prompt=PROMPT, quality="low", size=openai_size(adapted.shape),
                                         extra_body={"seed": 7})
    assert card.id == "tiny@tiny-2" and card.model_extra["family"]["name"] == GUIDANCE_DISTILLED.name
    assert card.model_extra["adapters"] == [{"id": ADAPTER.repo, "revision": ADAPTER.revision, "file": None,
                                             "scale": ADAPTER.scale}]
    assert info == 1
    served = pixels(base64.b64decode(result.data[0].b64_json))
    steps, guidance = GUIDANCE_DISTILLED.quality_steps["low"], GUIDANCE_DISTILLED.default_guidance
    for options, same in ((adapted, True), (family.dev, False)):
        image = family.load(options).generate(PROMPT, steps, guidance, seed=7)
        difference = np.abs(pixels(encode(image, "png", 100)) - served).max()
        assert (difference == 0) == same, f"{options.loras or 'the base weights'}: differs by up to {difference}"


def test_the_schnell_served_by_python_m_serving_takes_its_family_s_defaults(published_family):
    schnell = published_family.schnell
    with server_process(*graphs_root_argv(published_family.root, schnell), env=published_family.hub_env) as server:
        with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT_S) as client:
            server.wait_ready(client)
            payload = {"prompt": PROMPT, "seed": 3, "stream": True, "partial_images": 1}
            with client.stream("POST", endpoints.GENERATE, json=payload) as response:
                events = [(name, json.loads(data)) for name, data in server_sent_events(response.iter_lines()) if name]
        with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as sdk:
            (card,) = sdk.models.list().data
            streamed = list(sdk.images.generate(prompt=PROMPT, stream=True, partial_images=2, extra_body={"seed": 3}))
            with pytest.raises(openai.BadRequestError) as refused:
                sdk.images.generate(prompt=PROMPT, extra_body={"guidance_scale": 3.5})
    assert card.id == "tiny-schnell@tiny-2" and card.model_extra["adapters"] == []
    assert card.model_extra["family"]["name"] == TIMESTEP_DISTILLED.name
    # No steps asked: the family's 4, on /generate as for the OpenAI route's default quality.
    assert {data["steps"] for name, data in events if name == "progress"} == {TIMESTEP_DISTILLED.default_steps}
    assert events[-1][0] == "completed"
    assert [event.type for event in streamed] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    completed = Image.open(io.BytesIO(base64.b64decode(streamed[-1].b64_json)))
    assert completed.size == (schnell.shape.width, schnell.shape.height)
    assert "tiny-schnell is timestep-distilled: it has no guidance embedding" in refused.value.body["message"]
    requests = [json.loads(line) for line in server.stderr_lines if '"route": "/v1/images/generations"' in line]
    assert [(line["status"], line.get("steps")) for line in requests] == [
        (200, TIMESTEP_DISTILLED.default_steps), (400, None)]
