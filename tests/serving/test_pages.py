"""The playground's and docs page's files and what every response carries: static lookups that never fail
with a 5xx, no redirect built from the request's Host, and the headers that keep a browser from running
or framing anything but the pages' own files. Against a real uvicorn."""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import endpoints
from serving.app import ServerLimits
from serving.pages import CONTENT_SECURITY_POLICY, STATIC_DIR

REQUESTS = "flux_http_requests_total"


@pytest.fixture(scope="module")
def api(serve_tiny_artifact):
    with serve_tiny_artifact(ServerLimits(queue_size=2, request_timeout=120)) as server:
        yield server


@pytest.mark.parametrize(
    "path",
    [
        "x%00",
        "%00",
        "style.css%00.js",
        "%00/..",
        "a" * 300,
        "/".join(["a" * 250] * 20),
        "..%2f..%2f..%2fetc%2fpasswd",
        "%2e%2e/%2e%2e/serving/app.py",
        "%ff%fe",
    ],
)
def test_a_static_path_the_file_system_cannot_hold_is_a_404_in_the_error_shape(api, path):
    response = api.client.get(f"{endpoints.STATIC}/{path}")
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "not_found"


@given(name=st.text(min_size=1, max_size=300))
@settings(max_examples=200, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_static_lookup_is_a_server_error(api, name):
    response = api.client.get(f"{endpoints.STATIC}/{quote(name, safe='/')}")
    assert response.status_code < 500, (name, response.text)


def test_static_files_are_served_and_counted_under_their_route(api):
    before = api.metric(REQUESTS, route=endpoints.STATIC, status="200")
    response = api.client.get(f"{endpoints.STATIC}/style.css")
    assert response.status_code == 200
    assert response.content == (STATIC_DIR / "style.css").read_bytes()
    assert api.metric(REQUESTS, route=endpoints.STATIC, status="200") == before + 1
    missing_before = api.metric(REQUESTS, route=endpoints.STATIC, status="404")
    api.client.get(f"{endpoints.STATIC}/x%00")
    assert api.metric(REQUESTS, route=endpoints.STATIC, status="404") == missing_before + 1


def test_a_known_path_with_another_method_is_counted_under_its_route(api):
    before = api.metric(REQUESTS, route=endpoints.GENERATE, status="405")
    assert api.client.get(endpoints.GENERATE).status_code == 405
    assert api.metric(REQUESTS, route=endpoints.GENERATE, status="405") == before + 1


def test_no_redirect_takes_its_host_from_the_request(api):
    paths = [*api.client.get(endpoints.OPENAPI).json()["paths"], endpoints.PLAYGROUND, endpoints.DOCS]
    variants = {variant for path in paths for variant in (path + "/", path.rstrip("/") or "/", path + "//")}
    for path in sorted(variants):
        response = api.client.get(path, headers={"Host": "evil.example"})
        assert not response.is_redirect, (path, response.headers.get("location"))
        assert "evil.example" not in response.text
    assert api.client.get("/docs/").status_code == 404


@pytest.mark.parametrize("path", [endpoints.PLAYGROUND, endpoints.DOCS, f"{endpoints.STATIC}/playground.js",
                                  endpoints.OPENAPI, endpoints.HEALTHZ, "/no/such/page"])
def test_every_answer_has_a_strict_content_security_policy_frame_denial_and_nosniff(api, path):
    headers = api.client.get(path).headers
    assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    policy = dict(directive.split(" ", 1) for directive in CONTENT_SECURITY_POLICY.split("; "))
    assert policy["default-src"] == "'none'" and policy["frame-ancestors"] == "'none'"
    assert policy["script-src"] == "'self'" and "unsafe" not in CONTENT_SECURITY_POLICY
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"


def test_the_pages_need_nothing_the_policy_forbids(api):
    """No inline script or style, no handler attribute, nothing from another origin (the Chromium tests
    run the pages under the policy; this says why they can)."""
    for page in ("playground.html", "docs.html"):
        html = (STATIC_DIR / page).read_text()
        assert "<style" not in html and " style=" not in html
        assert not re.search(r"\son[a-z]+=", html), "no event handler attribute"
        scripts = html.count("<script")
        assert scripts == html.count('<script src="static/'), page
        assert "http:" not in html and "https:" not in html
