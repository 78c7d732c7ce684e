"""The serving HTTP contract that infra wires probes, Services and Ingress to."""

DEFAULT_PORT = 8000
HEALTHZ = "/healthz"
READYZ = "/readyz"
METRICS = "/metrics"
GENERATE = "/generate"
OPENAI_IMAGES = "/v1/images/generations"
