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
