"""Prometheus metrics of one server, and the ASGI middleware that observes every request.

The middleware gives each request an id (the client's ``X-Request-ID`` if it is a plain
token), echoes it, counts the request by route template and status, observes its latency,
and writes the request's one JSON log line, with whatever the route added (seed, steps).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.metrics_core import Metric
from starlette.datastructures import MutableHeaders
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common import endpoints
from serving.logs import REQUEST_ID_HEADER, request_id_from

# Requests that matched no route share one label, so scanners cannot blow up cardinality.
UNMATCHED_ROUTE = "unmatched"
# Requests the HTTP parser refused (malformed framing, a header section over the limit): no route is known.
MALFORMED_ROUTE = "malformed"
CLIENT_CLOSED_REQUEST = 499
# A request whose client did not send it whole within the read timeout: the server closed it, not the client.
REQUEST_TIMEOUT = 408
# Set in a request's ASGI scope when the status it ended with is not one it sent: a stream that failed or
# lost its client after its 200 (serving/streaming.py), a request the HTTP layer timed out (408).
OUTCOME_STATUS_SCOPE_KEY = "flux.outcome_status"
# Probes take milliseconds (all in the first bucket), generations seconds to minutes
# (1024x576 on inf2 is about 1 s a step; a 4-image request at 50 steps passes 120 s: +Inf).
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120)
# Where a route puts the fields of its request's log line, in the ASGI scope it shares with us.
LOG_FIELDS_SCOPE_KEY = "flux.log_fields"
# The recent quantiles: of the last 5 minutes' observations (the dashboard's period is a minute, the alerts'
# rate windows 5), at most this many of them.
RECENT_WINDOW_S = 300.0
RECENT_QUANTILES = (0.5, 0.95)
MAX_RECENT_OBSERVATIONS = 10_000

log = logging.getLogger("serving.requests")


class RecentQuantiles:
    """A Prometheus summary of the observations of the last RECENT_WINDOW_S seconds: their RECENT_QUANTILES,
    with the running count and sum. The CloudWatch agent that takes the serving metrics to CloudWatch keeps
    counters, gauges and summaries and drops histograms (infra/observability.py): this is the histograms'
    percentiles in a form it keeps. Thread-safe (the worker thread and the event loop observe)."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.documentation = documentation
        self._clock = clock
        self._lock = threading.Lock()
        self._recent: deque[tuple[float, float]] = deque(maxlen=MAX_RECENT_OBSERVATIONS)
        self._count = 0
        self._sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        with self._lock:
            self._recent.append((self._clock(), value))
            self._count += 1
            self._sum += value

    def quantiles(self) -> dict[float, float]:
        """The nearest-rank quantiles of the window; none without an observation in it."""
        horizon = self._clock() - RECENT_WINDOW_S
        with self._lock:
            while self._recent and self._recent[0][0] < horizon:
                self._recent.popleft()
            values = sorted(value for _, value in self._recent)
        if not values:
            return {}
        return {quantile: values[max(0, math.ceil(quantile * len(values)) - 1)] for quantile in RECENT_QUANTILES}

    def collect(self) -> Iterator[Metric]:
        summary = Metric(self.name, self.documentation, "summary")
        for quantile, value in self.quantiles().items():
            summary.add_sample(self.name, {"quantile": str(quantile)}, value)
        with self._lock:
            summary.add_sample(f"{self.name}_count", {}, self._count)
            summary.add_sample(f"{self.name}_sum", {}, self._sum)
        yield summary


class Metrics:
    """One registry per server, so several servers in one process (tests, the bench) stay apart."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            endpoints.REQUESTS_METRIC,
            "HTTP requests by route and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            endpoints.LATENCY_METRIC,
            "HTTP request latency end to end (queueing included) by route and status class (2xx, 4xx, 5xx).",
            ["route", "status_class"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.generation_seconds = Histogram(
            endpoints.GENERATION_METRIC,
            "Time one image took on the pipeline, PNG encoding excluded; completed generations only.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait_seconds = Histogram(
            endpoints.QUEUE_WAIT_METRIC,
            "Time an admitted request waited for the pipeline before its generation started.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.generation_latency_recent = RecentQuantiles(
            endpoints.GENERATION_LATENCY_RECENT_METRIC,
            "Generation requests answered 2xx, end to end (queueing included): quantiles of the last 5 minutes.",
            self.registry,
        )
        self.queue_wait_recent = RecentQuantiles(
            endpoints.QUEUE_WAIT_RECENT_METRIC,
            "Waits for the pipeline: quantiles of the last 5 minutes.",
            self.registry,
        )
        self.generations = Counter(
            "flux_generations",
            "Images by outcome: completed, stopped (client gone or deadline passed at a step end), failed.",
            ["outcome"],
            registry=self.registry,
        )
        self.runtime_errors = Counter(
            endpoints.RUNTIME_ERRORS_METRIC,
            "Runtime errors of the pipeline (device or Neuron runtime failures) by what ran: generation, self_test.",
            ["during"],
            registry=self.registry,
        )
        self.unready_on_errors = Gauge(
            endpoints.UNREADY_ON_ERRORS_METRIC,
            "1 while /readyz answers 503 because of consecutive runtime errors, else 0.",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            endpoints.QUEUE_DEPTH_METRIC,
            "Admitted generations waiting for the pipeline.",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            endpoints.IN_FLIGHT_METRIC,
            "Generations running on the pipeline (0 or 1).",
            registry=self.registry,
        )
        self.server = Info(
            "flux_server",
            "The artifact this server serves: model, revision, shape (HxW), backend, artifact key.",
            registry=self.registry,
        )

    def count_protocol_error(self, status: int, request_id: str) -> None:
        """A request the HTTP parser refused before any route saw it (serving/http_server.py)."""
        self.requests.labels(MALFORMED_ROUTE, str(status)).inc()
        log_request({"request_id": request_id, "method": None, "route": MALFORMED_ROUTE, "status": status})


def status_class(status: int) -> str:
    return f"{status // 100}xx"


def log_request(fields: dict[str, object]) -> None:
    """A request's one JSON log line."""
    log.info("%s %s %d", fields["method"], fields["route"], fields["status"], extra={"fields": fields})


class RequestObserver:
    """Request id, metrics and the log line of every HTTP request, by route template (not raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: list[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    def _route_label(self, scope: Scope) -> str:
        """The template of the route the request's path names (its method may still be refused: 405).
        Matched before the app runs: a mount rewrites the scope's root_path as it routes, after which its
        own pattern no longer matches the path (/static/* counted as unmatched)."""
        matches = [(candidate.matches(scope)[0], candidate.path) for candidate in self.routes]
        for wanted in (Match.FULL, Match.PARTIAL):
            for match, path in matches:
                if match is wanted:
                    return path
        return UNMATCHED_ROUTE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(
            next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None)
        )
        fields: dict[str, object] = {"request_id": request_id}
        scope[LOG_FIELDS_SCOPE_KEY] = fields
        route_label = self._route_label(scope)
        started = time.perf_counter()
        sent_status: int | None = None
        failed = recorded = False

        def record() -> None:
            """Count the request and write its line, once. Its status: how it ended, when that is not what it
            sent (a stream's 200, serving/streaming.py; a 408 of the HTTP layer); what it sent; 500 for an
            exception escaping the app (Starlette's outermost handler answers it); else nothing was answered
            because nobody was left to answer: the client closed the request (nginx's 499)."""
            nonlocal recorded
            if recorded:
                return
            recorded = True
            status = scope.get(OUTCOME_STATUS_SCOPE_KEY) or sent_status or (500 if failed else CLIENT_CLOSED_REQUEST)
            seconds = time.perf_counter() - started
            self.metrics.requests.labels(route_label, str(status)).inc()
            self.metrics.latency.labels(route_label, status_class(status)).observe(seconds)
            if route_label in endpoints.GENERATION_ROUTES and status_class(status) == "2xx":
                self.metrics.generation_latency_recent.observe(seconds)
            log_request(
                {**fields, "method": scope["method"], "route": route_label, "status": status,
                 "latency_s": round(seconds, 4)}
            )

        async def send_with_request_id(message: Message) -> None:
            nonlocal sent_status
            if message["type"] == "http.response.start":
                sent_status = message["status"]
                message["headers"] = list(message.get("headers", []))
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # Counted before the answer's last byte leaves: whoever has the whole answer finds it counted.
                record()
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        except BaseException:
            failed = True
            raise
        finally:
            record()
