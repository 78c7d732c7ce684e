"""Progress streamed as server-sent events: OpenAI's image generation events read by the official SDK's
stream iterator, /generate's step k of n with latent previews, the place in the queue while a request
waits, errors after the 200, and clients that hang up mid-stream freeing their place. Real uvicorn, the
real tiny pipeline; held generations come from gates in front of it, not from timing."""

from __future__ import annotations

import base64
import io
import json
import threading

import httpx
import openai
import pytest
from PIL import Image

from common import endpoints
from serving.app import ServerLimits
from serving.previews import VAE_SCALE, preview_steps
from serving.schemas import openai_size

from .conftest import CLIENT_TIMEOUT_S, HeldAtStep, server_sent_events, wait_for
from .test_lifecycle import FailsOnPrompt

REQUESTS = "flux_http_requests_total"
IN_FLIGHT = "flux_generations_in_flight"


def decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))


@pytest.fixture(scope="module")
def server(serve_tiny_artifact):
    with serve_tiny_artifact(ServerLimits(queue_size=4, request_timeout=120, max_images=2)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as sdk:
        yield sdk


@pytest.mark.parametrize("partial_images", [0, 1, 2, 3])
def test_the_sdk_streams_partial_images_then_the_completed_one(client, served, partial_images):
    size = openai_size(served.shape)
    events = list(client.images.generate(prompt="a red fox", quality="low", stream=True,
                                         partial_images=partial_images, extra_body={"seed": 9}))
    *partials, completed = events
    assert [event.type for event in partials] == ["image_generation.partial_image"] * partial_images
    assert [event.partial_image_index for event in partials] == list(range(partial_images))
    assert completed.type == "image_generation.completed"
    for event in events:
        assert (event.size, event.quality, event.background, event.output_format) == (size, "low", "opaque", "png")
        assert event.model_extra["seed"] == 9
    # Previews are the latents' own resolution: an eighth of the image per side, no VAE.
    for event in partials:
        assert decoded(event.b64_json).size == (served.shape.width // VAE_SCALE, served.shape.height // VAE_SCALE)
    # The completed image is the one the same request gets without streaming.
    plain = client.images.generate(prompt="a red fox", quality="low", extra_body={"seed": 9})
    assert completed.b64_json == plain.data[0].b64_json
    assert decoded(completed.b64_json).size == (served.shape.width, served.shape.height)


def test_n_images_stream_one_after_another_in_the_requested_format(client):
    events = list(client.images.generate(prompt="a red fox", quality="low", stream=True, partial_images=1, n=2,
                                         output_format="webp", extra_body={"seed": 20}))
    assert [(event.type.split(".")[1], event.model_extra["seed"]) for event in events] == [
        ("partial_image", 20), ("completed", 20), ("partial_image", 21), ("completed", 21)]
    assert {decoded(event.b64_json).format for event in events} == {"WEBP"}


def generate_events(url: str, **body) -> list[tuple[str | None, dict | str]]:
    payload = {"prompt": "a red fox", "num_inference_steps": 6, "stream": True, **body}
    with httpx.stream("POST", url + endpoints.GENERATE, json=payload, timeout=CLIENT_TIMEOUT_S) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [(name, data if name is None else json.loads(data))
                for name, data in server_sent_events(response.iter_lines())]


def test_generate_streams_step_k_of_n_with_previews_then_the_same_answer(server, served):
    steps, partial_images = 6, 2
    events = [(name, data) for name, data in generate_events(server.url, seed=4, partial_images=partial_images,
                                                             num_inference_steps=steps) if name != "queued"]
    progress = [data for name, data in events if name == "progress"]
    assert [data["step"] for data in progress] == list(range(steps + 1))
    assert {data["steps"] for data in progress} == {steps}
    previews = {data["step"]: data for data in progress if "image" in data}
    assert {step: data["partial_image_index"] for step, data in previews.items()} == preview_steps(steps, partial_images)
    for data in previews.values():
        assert decoded(data["image"]).size == (served.shape.width // VAE_SCALE, served.shape.height // VAE_SCALE)
    name, completed = events[-1]
    assert name == "completed"
    plain = server.client.post(endpoints.GENERATE, json={"prompt": "a red fox", "num_inference_steps": steps,
                                                         "seed": 4}).json()
    assert (completed["image"], completed["seed"]) == (plain["image"], 4)
    assert completed["execution_time"] > 0


def test_refusals_before_the_stream_are_plain_http_errors(server):
    response = server.client.post(endpoints.GENERATE, json={"prompt": " ", "num_inference_steps": 2, "stream": True})
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"
    response = server.client.post(endpoints.GENERATE, json={"prompt": "a fox", "num_inference_steps": 2,
                                                           "stream": True, "partial_images": 4})
    assert response.status_code == 400 and response.json()["error"]["param"] == "partial_images"


def hold_one_running(start_server, gated_generator, background, queue_size: int):
    """A server whose pipeline holds one request behind the closed gate; it and that request's pending answer."""
    server = start_server(lambda: gated_generator, queue_size=queue_size)
    server.wait_until_settled()
    gated_generator.gate.clear()
    running = background.submit(server.generate, seed=1)
    server.wait_for_metric(IN_FLIGHT, 1)
    return server, running


def test_a_streamed_request_reports_its_place_in_the_queue_while_it_waits(start_server, gated_generator, background):
    server, running = hold_one_running(start_server, gated_generator, background, queue_size=2)

    heard: dict[int, list] = {0: [], 1: []}

    def listen(which: int) -> None:
        payload = {"prompt": "a red fox", "num_inference_steps": 2, "stream": True}
        with httpx.stream("POST", server.url + endpoints.GENERATE, json=payload, timeout=CLIENT_TIMEOUT_S) as response:
            for name, data in server_sent_events(response.iter_lines()):
                heard[which].append((name, json.loads(data)))

    first = threading.Thread(target=listen, args=(0,))
    first.start()
    wait_for(lambda: ("queued", {"position": 1}) in heard[0], "the first to hear it runs next")
    second = threading.Thread(target=listen, args=(1,))
    second.start()
    wait_for(lambda: ("queued", {"position": 2}) in heard[1], "the second to hear one request is ahead of it")

    gated_generator.gate.set()
    assert running.result().status_code == 200
    for thread in (first, second):
        thread.join(CLIENT_TIMEOUT_S)
    # The second moved up when the running one finished, then ran after the first.
    places = [data["position"] for name, data in heard[1] if name == "queued"]
    assert places == [2, 1]
    for events in heard.values():
        names = [name for name, _ in events]
        assert names[-1] == "completed" and "progress" in names
        assert max(i for i, name in enumerate(names) if name == "queued") < names.index("progress")


def test_the_sdk_shows_the_queue_position_as_comments_it_skips(start_server, gated_generator, background, served):
    server, running = hold_one_running(start_server, gated_generator, background, queue_size=1)
    payload = {"prompt": "a red fox", "quality": "low", "stream": True}
    with httpx.stream("POST", server.url + endpoints.OPENAI_IMAGES, json=payload, timeout=CLIENT_TIMEOUT_S) as raw:
        lines = raw.iter_lines()
        assert next(server_sent_events(lines)) == (None, "queued, position 1")
        gated_generator.gate.set()
        rest = list(server_sent_events(lines))
    assert running.result().status_code == 200
    low = served.family.quality_steps["low"]
    assert (None, f"image 1, step {low} of {low}") in rest
    assert rest[-1][0] == "image_generation.completed"


def test_an_error_after_the_stream_began_is_an_error_event_the_sdk_raises(start_server, tiny_generator):
    server = start_server(lambda: FailsOnPrompt(tiny_generator, "explode"))
    assert server.wait_until_settled().status_code == 200
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as sdk:
        with pytest.raises(openai.APIError) as failed:
            list(sdk.images.generate(prompt="explode", quality="low", stream=True))
    assert failed.value.message == "internal server error (the server log has the details)"
    assert failed.value.body["code"] == "server_error"
    # Counted as what it was, not as the 200 that began the stream.
    assert server.metric(REQUESTS, route=endpoints.OPENAI_IMAGES, status="500") == 1
    assert server.metric(REQUESTS, route=endpoints.OPENAI_IMAGES, status="200") == 0


def test_a_stream_past_its_deadline_ends_with_a_timeout_event(start_server, tiny_generator, gate):
    held = HeldAtStep(tiny_generator, 1, gate)
    server = start_server(lambda: held, request_timeout=1.0)
    server.wait_until_settled()
    gate.clear()
    events = generate_events(server.url, num_inference_steps=3)
    gate.set()
    name, data = events[-1]
    assert (name, data["error"]["code"]) == ("error", "timeout")
    wait_for(lambda: server.metric(REQUESTS, route=endpoints.GENERATE, status="504") == 1, "the 504 counted")


def test_a_client_that_hangs_up_mid_stream_frees_its_place(start_server, tiny_generator, gate):
    held = HeldAtStep(tiny_generator, 2, gate)
    server = start_server(lambda: held, queue_size=0)
    server.wait_until_settled()
    gate.clear()
    payload = {"prompt": "a red fox", "num_inference_steps": 6, "stream": True}
    with httpx.stream("POST", server.url + endpoints.GENERATE, json=payload, timeout=CLIENT_TIMEOUT_S) as response:
        for name, data in server_sent_events(response.iter_lines()):
            if name == "progress" and json.loads(data)["step"] == 2:
                break
        assert server.generate().status_code == 429, "its one place is taken"
    # Hung up, held at step 2: the generation stops at its next step end and the place is free.
    gate.set()
    wait_for(lambda: server.metric("flux_generations_total", outcome="stopped") == 1, "the generation to stop")
    assert server.generate().status_code == 200
    wait_for(lambda: server.metric(REQUESTS, route=endpoints.GENERATE, status="499") == 1, "the 499 counted")
