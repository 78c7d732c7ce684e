"""No input makes a 5xx: hand-made junk bodies, then a bounded fuzz from the app's own OpenAPI schema."""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings

from common import endpoints
from serving.app import ServerLimits

MAX_BODY_BYTES = 4096
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def api(serve_tiny_artifact):
    limits = ServerLimits(queue_size=4, request_timeout=120, max_body_bytes=MAX_BODY_BYTES, max_images=1)
    with serve_tiny_artifact(limits) as server:
        yield server


def assert_error(response: httpx.Response, status: int, *fragments: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for fragment in fragments:
        assert fragment in error["message"], error
    return error


JUNK = [
    pytest.param(b'{"prompt": "a fox", "num_inference_steps": NaN}', id="NaN"),
    pytest.param(b'{"prompt": "a fox", "num_inference_steps": 2, "guidance_scale": Infinity}', id="Infinity"),
    pytest.param(b'{"prompt": "a fox", "num_inference_steps": 2, "guidance_scale": -Infinity}', id="-Infinity"),
    pytest.param(b'{"prompt": "a fox", "num_inference_steps": 2, "guidance_scale": 1e309}', id="1e309"),
    pytest.param(b'{"prompt": "a fox", "num_inference_steps": 2, "seed": [1e309]}', id="nested-1e309"),
    pytest.param(b'{"prompt": "\\ud800", "num_inference_steps": 2}', id="lone-surrogate"),
    pytest.param(b'{"\\udfff": 1, "prompt": "a fox", "num_inference_steps": 2}', id="lone-surrogate-key"),
    pytest.param(b'{"prompt": "a \xff fox", "num_inference_steps": 2}', id="invalid-utf8"),
    pytest.param(b'{"prompt": ' + b"[" * 1000 + b"]" * 1000 + b"}", id="deep-nesting"),
    pytest.param(b'{"prompt": "a fox", "num_inference_steps": 2' , id="truncated"),
    pytest.param(b"", id="empty"),
    pytest.param(b"prompt=fox", id="form-encoded-as-json"),
    pytest.param(b'{"prompt": "a fox", "num_inference_steps": ' + b"9" * 3000 + b"}", id="huge-integer"),
]


@pytest.mark.parametrize("route", [endpoints.GENERATE, endpoints.OPENAI_IMAGES])
@pytest.mark.parametrize("body", JUNK)
def test_junk_json_is_a_400_that_does_not_echo_it(api, route, body):
    response = api.client.post(route, content=body, headers=JSON)
    error = assert_error(response, 400)
    assert error["type"] == "invalid_request_error"
    assert len(response.content) < 300, "the input is not echoed back"


@pytest.mark.parametrize("route", [endpoints.GENERATE, endpoints.OPENAI_IMAGES])
def test_valid_json_of_the_wrong_shape_is_a_400(api, route):
    for body in ([], "fox", 3, None, {"prompt": {"nested": "object"}}):
        assert_error(api.client.post(route, content=json.dumps(body), headers=JSON), 400)


def test_unknown_field_names_that_are_not_plain_are_not_repeated(api):
    body = {"prompt": "a fox", "num_inference_steps": 2, "<script>" * 100: 1}
    error = assert_error(api.client.post(endpoints.GENERATE, json=body), 400, "an unrecognized request argument")
    assert "script" not in json.dumps(error) and error["param"] is None


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_content_type_other_than_json_is_415(api, content_type):
    headers = {} if content_type is None else {"content-type": content_type}
    body = json.dumps({"prompt": "a fox", "num_inference_steps": 2}).encode()
    response = api.client.post(endpoints.GENERATE, content=body, headers=headers)
    assert_error(response, 415, "Content-Type must be application/json")


def test_json_with_a_charset_is_json(api):
    body = json.dumps({"prompt": "a fox", "num_inference_steps": 1}).encode()
    response = api.client.post(endpoints.GENERATE, content=body, headers={"content-type": "application/json; charset=utf-8"})
    assert response.status_code == 200, response.text


def test_an_oversize_body_is_413_whether_declared_or_streamed(api):
    big = json.dumps({"prompt": "x" * MAX_BODY_BYTES, "num_inference_steps": 2}).encode()
    declared = api.client.post(endpoints.GENERATE, content=big, headers=JSON)
    assert_error(declared, 413, f"limit of {MAX_BODY_BYTES} bytes")
    assert len(declared.content) < 300

    def chunks():  # No Content-Length: chunked transfer encoding.
        for start in range(0, len(big), 1024):
            yield big[start : start + 1024]

    streamed = api.client.post(endpoints.OPENAI_IMAGES, content=chunks(), headers=JSON)
    assert_error(streamed, 413, f"limit of {MAX_BODY_BYTES} bytes")
    # The server still answers on new connections afterwards.
    assert api.client.get(endpoints.HEALTHZ).status_code == 200


def test_unknown_routes_and_methods_answer_in_the_error_shape(api):
    assert_error(api.client.get("/no/such/path"), 404, "Not Found")
    assert_error(api.client.get(endpoints.GENERATE), 405, "Method Not Allowed")


@pytest.fixture(scope="module")
def schnell_api(serve_published, published_family):
    with serve_published(published_family.schnell, ServerLimits(queue_size=4, request_timeout=120, max_images=1)) as server:
        yield server


@pytest.fixture(scope="module", params=["api", "schnell_api"], ids=["guidance-distilled", "timestep-distilled"])
def schema(request):
    """The schema of a server of each family: its bounds and fields differ (tests/serving/test_families.py)."""
    return schemathesis.openapi.from_url(request.getfixturevalue(request.param).url + endpoints.OPENAPI)


fuzzed = schemathesis.pytest.from_fixture("schema")


@fuzzed.parametrize()
# Bounded and reproducible: a fixed, small number of examples per operation, no shrinking.
@settings(
    max_examples=6,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_fuzzed_requests_get_no_server_error_and_match_the_schema(case):
    # All of schemathesis' default checks: no 5xx, status codes, content types and bodies as declared.
    case.call_and_validate()
