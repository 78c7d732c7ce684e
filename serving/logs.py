"""Request ids for the server's JSON log lines (common/logs.py is the format): a request's line
carries its request id, route, status, latency, seed and steps as JSON values. And what keeps the
users' prompts out of the log, whatever library would write them."""

from __future__ import annotations

import logging
import re
import uuid

REQUEST_ID_HEADER = "X-Request-ID"
# A client's id is honoured only if it is a plain token; anything else gets a fresh id.
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id_from(header_value: str | None) -> str:
    if header_value is not None and _CLIENT_REQUEST_ID.match(header_value):
        return header_value
    return uuid.uuid4().hex


# diffusers' FluxPipeline warns when it truncates a prompt to what CLIP or T5 reads, and quotes the cut-off
# text: "The following part of your input was truncated because CLIP can only handle sequences up to 77
# tokens: [...]" (pipeline_flux.py, _get_clip_prompt_embeds and _get_t5_prompt_embeds).
TRUNCATION_WARNING = "The following part of your input was truncated because"


class PromptRedaction(logging.Filter):
    """Keeps prompts out of the log: a truncation warning keeps its reason and loses the quoted text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(TRUNCATION_WARNING):
            record.msg = message.split(":", 1)[0] + " (the truncated prompt text is not logged)"
            record.args = None
        return True


def redact_prompts() -> None:
    """Install PromptRedaction on the process's log handlers (after common.logs.configure_json_logging)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(PromptRedaction())
