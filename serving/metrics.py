"""Prometheus metrics of one server, and the ASGI middleware that counts requests."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import endpoints

# Requests that matched no route share one label, so scanners cannot blow up cardinality.
UNMATCHED_ROUTE = "unmatched"
# Probes take milliseconds, generations seconds to minutes (1024x576 on inf2 ~1 s a step).
LATENCY_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)


class Metrics:
    """One registry per server, so several servers in one process (tests, the bench) stay apart."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            endpoints.REQUESTS_METRIC,
            "HTTP requests by route and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            endpoints.LATENCY_METRIC,
            "HTTP request latency by route, queueing included.",
            ["route"],
            buckets=LATENCY_BUCKETS,
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


class RequestMetricsMiddleware:
    """Counts every HTTP request by its route template (not the raw path) and final status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # An exception escaping the app becomes a 500 in Starlette's outermost error handler.
        status = 500

        async def send_and_record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            # The router stores the matched route in the scope it shares with us.
            route = scope.get("route")
            route_label = route.path if route is not None else UNMATCHED_ROUTE
            self.metrics.requests.labels(route_label, str(status)).inc()
            self.metrics.latency.labels(route_label).observe(time.perf_counter() - started)
