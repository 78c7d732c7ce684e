"""One log format for every process the image runs (the server, the compile and its component
processes): one JSON object per line on stderr.

Fields passed as ``extra={"fields": {...}}`` are merged into the line as JSON values, which is how a
request's line carries its id and status and a compile's progress events their component and elapsed
time (common/progress.py).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

# Libraries that attach a handler of their own, writing plain text, when they are imported: their records
# are sent through the process's JSON handler instead. neuronx-distributed has three: its tracing code's
# "Neuron", and the rank-0 and every-rank loggers of neuronx_distributed.utils.logger (which write to stdout).
LIBRARY_LOGGERS = ("transformers", "diffusers", "huggingface_hub", "torch", "Neuron", "neuronx_distributed[0]",
                   "neuronx_distributed[]")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        # ensure_ascii: a field the client chose can never make a line unwritable.
        return json.dumps(line, ensure_ascii=True, default=str)


def route_library_loggers() -> None:
    """Send the libraries' own log records to the root logger's handler (call after importing them:
    each adds its handler once, at import)."""
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        for handler in list(library.handlers):
            library.removeHandler(handler)
        library.propagate = True


def configure_json_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr for the whole process, Python warnings and the libraries' records included,
    unless the process configured logging already (an embedding app, pytest)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler])
    logging.captureWarnings(True)
    route_library_loggers()
