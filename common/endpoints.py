"""The serving HTTP contract that infra wires probes, Services and Ingress to."""

DEFAULT_PORT = 8000
HEALTHZ = "/healthz"
READYZ = "/readyz"
METRICS = "/metrics"
GENERATE = "/generate"
OPENAI_IMAGES = "/v1/images/generations"
OPENAI_MODELS = "/v1/models"
PLAYGROUND = "/"
DOCS = "/docs"
OPENAPI = "/openapi.json"
# The playground's and the docs page's own files (HTML, JS, CSS), shipped in serving/static.
STATIC = "/static"

# What METRICS exports (serving/metrics.py), read by the autoscaler and the alert rules (infra/monitoring.py).
REQUESTS_METRIC = "flux_http_requests"  # a counter, exported as flux_http_requests_total
LATENCY_METRIC = "flux_http_request_duration_seconds"  # a histogram, queueing included
GENERATION_METRIC = "flux_generation_seconds"  # a histogram of pipeline time per image
QUEUE_WAIT_METRIC = "flux_queue_wait_seconds"  # a histogram of the wait for the pipeline
# Summaries of the last minutes' quantiles (label quantile), for the CloudWatch agent, which drops histograms.
GENERATION_LATENCY_RECENT_METRIC = "flux_generation_latency_recent_seconds"  # generation requests answered 2xx
QUEUE_WAIT_RECENT_METRIC = "flux_queue_wait_recent_seconds"
# The routes that generate, as the metrics and the alerts group them.
GENERATION_ROUTES = (GENERATE, OPENAI_IMAGES)
QUEUE_DEPTH_METRIC = "flux_queue_depth"
IN_FLIGHT_METRIC = "flux_generations_in_flight"
RUNTIME_ERRORS_METRIC = "flux_runtime_errors"  # a counter by `during`, exported as flux_runtime_errors_total
UNREADY_ON_ERRORS_METRIC = "flux_unready_on_runtime_errors"  # a gauge: 1 while /readyz is 503 for runtime errors

# Consecutive runtime errors (failed generations, serving/health.py) after which /readyz turns 503: the
# server's default and what the serving Deployment passes. The graphs are compiled for one shape and every
# input is validated before it reaches them, so a generation that fails is the device or the runtime, not the
# request: 3 in a row tell that from a one-off while the pod loses its traffic after a few requests.
UNREADY_AFTER_RUNTIME_ERRORS = 3
