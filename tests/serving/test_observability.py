"""The signals an operator runs the server with: histograms, the info metric, process metrics, log lines."""

from __future__ import annotations

import json
import logging

import pytest

from common import endpoints
from serving.app import ServerLimits
from common.logs import JsonFormatter
from serving.logs import REQUEST_ID_HEADER
from prometheus_client import CollectorRegistry

from serving.metrics import LATENCY_BUCKETS, RECENT_QUANTILES, RECENT_WINDOW_S, RecentQuantiles


@pytest.fixture(scope="module")
def api(serve_tiny_artifact):
    with serve_tiny_artifact(ServerLimits(queue_size=2, request_timeout=120)) as server:
        yield server


def test_histograms_of_generation_queue_wait_and_latency_by_status_class(api):
    assert (LATENCY_BUCKETS[0], LATENCY_BUCKETS[-1]) == (0.1, 120)
    generated_before = api.metric("flux_generation_seconds_count")
    assert api.generate().status_code == 200
    assert api.client.post(endpoints.GENERATE, json={"prompt": "a fox", "num_inference_steps": 0}).status_code == 400
    assert api.metric("flux_generation_seconds_count") == generated_before + 1
    assert api.metric("flux_generation_seconds_sum") > 0
    assert api.metric("flux_queue_wait_seconds_count") >= 1
    assert api.metric("flux_queue_wait_seconds_bucket", le="120.0") >= 1
    for status_class in ("2xx", "4xx"):
        count = api.metric("flux_http_request_duration_seconds_count", route=endpoints.GENERATE, status_class=status_class)
        assert count >= 1, status_class


def test_recent_quantiles_of_generations_and_queue_waits_for_cloudwatch(api):
    assert api.generate().status_code == 200
    for name in (endpoints.GENERATION_LATENCY_RECENT_METRIC, endpoints.QUEUE_WAIT_RECENT_METRIC):
        median, p95 = (api.metric(name, quantile=str(q)) for q in RECENT_QUANTILES)
        assert 0 <= median <= p95
        assert api.metric(f"{name}_count") >= 1
    # A refused request is not a generation's latency.
    count = api.metric(f"{endpoints.GENERATION_LATENCY_RECENT_METRIC}_count")
    assert api.client.post(endpoints.GENERATE, json={"prompt": "a fox", "num_inference_steps": 0}).status_code == 400
    assert api.metric(f"{endpoints.GENERATION_LATENCY_RECENT_METRIC}_count") == count


def test_recent_quantiles_are_nearest_rank_over_the_window_only():
    now = [0.0]
    recent = RecentQuantiles("recent_seconds", "test", CollectorRegistry(), clock=lambda: now[0])
    assert recent.quantiles() == {}
    for value in range(1, 101):
        recent.observe(float(value))
    assert recent.quantiles() == {0.5: 50.0, 0.95: 95.0}
    now[0] = RECENT_WINDOW_S / 2
    recent.observe(1000.0)
    assert recent.quantiles()[0.95] == 96.0
    now[0] = RECENT_WINDOW_S + 1  # The first hundred are past the window.
    assert recent.quantiles() == {0.5: 1000.0, 0.95: 1000.0}
    now[0] = 3 * RECENT_WINDOW_S
    assert recent.quantiles() == {}


def test_info_metric_names_the_artifact(api, served):
    labels = {
        "model": served.model,
        "revision": served.revision,
        "shape": str(served.shape),
        "backend": served.backend,
        "artifact": served.artifact,
        "family": "guidance-distilled",
        "weights": served.weights,
        "adapters": "",
    }
    assert api.metric("flux_server_info", **labels) == 1


def test_process_metrics(api):
    assert api.metric("process_resident_memory_bytes") > 0
    assert api.metric("process_open_fds") > 0
    assert api.metric("process_cpu_seconds_total") > 0


def test_request_id_is_honoured_or_made_and_logged_with_the_request(api, caplog):
    with caplog.at_level(logging.INFO, logger="serving.requests"):
        response = api.client.post(
            endpoints.GENERATE,
            json={"prompt": "a red fox", "num_inference_steps": 2, "seed": 11},
            headers={REQUEST_ID_HEADER: "abc-123"},
        )
        assert response.headers[REQUEST_ID_HEADER] == "abc-123"
        # Not a plain token: replaced, so a client cannot inject into the log.
        made = api.client.get(endpoints.HEALTHZ, headers={REQUEST_ID_HEADER: "bad id\\n{}"}).headers[REQUEST_ID_HEADER]
        assert made != "bad id\\n{}" and len(made) == 32
    lines = {record.fields["request_id"]: json.loads(JsonFormatter().format(record)) for record in caplog.records}
    line = lines["abc-123"]
    assert (line["route"], line["status"], line["seed"], line["steps"], line["method"]) == (
        endpoints.GENERATE,
        200,
        11,
        2,
        "POST",
    )
    assert line["latency_s"] > 0 and line["level"] == "INFO"
    assert lines[made]["route"] == endpoints.HEALTHZ


def test_the_openai_user_is_logged(api, served, caplog):
    with caplog.at_level(logging.INFO, logger="serving.requests"):
        api.client.post(endpoints.OPENAI_IMAGES, json={"prompt": "a fox", "quality": "low", "user": "u-7"})
    (record,) = [record for record in caplog.records if record.fields.get("user") == "u-7"]
    assert record.fields["status"] == 200 and record.fields["steps"] == served.family.quality_steps["low"]


def test_a_log_line_is_one_json_object_whatever_the_fields_hold():
    record = logging.LogRecord("serving.requests", logging.INFO, __file__, 1, "POST %s", ("/generate",), None)
    record.fields = {"user": "\ud800 \n \"quoted\"", "seed": 3}
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "POST /generate" and parsed["seed"] == 3
