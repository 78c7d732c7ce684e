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
QUEUE_DEPTH_METRIC = "flux_queue_depth"
IN_FLIGHT_METRIC = "flux_generations_in_flight"
