"""Progress of a compile as events in its JSON log (common/logs.py): what a compile Job's log shows an
operator and what `scripts/status` reads back.

An event is a log line with an ``event`` field and these fields:

- ``started``: ``kind``, ``artifact`` (its directory name), ``steps`` (their names, in order);
- ``step_started``: ``kind``, ``step``, ``index`` (1-based), ``count``;
- ``step_finished``: the same, and ``elapsed_s`` (the step's seconds);
- ``published``: ``kind``, ``artifact``, ``elapsed_s`` (since ``started``); ``already_published``:
  ``kind``, ``artifact`` (nothing was compiled);
- ``failed``: ``kind``, ``error`` (one line).

``kind`` is ``graphs`` (a shape's compiled graphs, one step per component) or ``weights`` (the sharded
checkpoint every shape of a model shares, one step per component and tensor-parallel rank).
"""

from __future__ import annotations

import json
import logging

EVENT_FIELD = "event"
STARTED = "started"
STEP_STARTED = "step_started"
STEP_FINISHED = "step_finished"
PUBLISHED = "published"
ALREADY_PUBLISHED = "already_published"
FAILED = "failed"
EVENTS = (STARTED, STEP_STARTED, STEP_FINISHED, PUBLISHED, ALREADY_PUBLISHED, FAILED)

GRAPHS = "graphs"
WEIGHTS = "weights"
KINDS = (GRAPHS, WEIGHTS)


def log_event(logger: logging.Logger, event: str, message: str, **fields: object) -> None:
    """One event: ``message`` for people, the fields for programs."""
    if event not in EVENTS:
        raise ValueError(f"unknown progress event {event!r}: expected one of {', '.join(EVENTS)}")
    logger.info(message, extra={"fields": {EVENT_FIELD: event, **fields}})


def read_event(line: str) -> dict | None:
    """The event a log line carries, or None for any other line (plain text, or JSON without an event)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get(EVENT_FIELD) not in EVENTS:
        return None
    return record
