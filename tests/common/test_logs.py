"""The one log format: every line a process writes through logging, warnings or the libraries' own
loggers is a JSON object, and progress events read back from those lines."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from common import progress
from common.logs import JsonFormatter

REPO = Path(__file__).resolve().parents[2]

# A process that logs the ways the image's processes do: its own logger, a Python warning, and
# the libraries' loggers, which attach plain-text handlers of their own at import.
NOISY_PROCESS = """
import logging, warnings
import transformers, diffusers
from transformers.utils import logging as transformers_logging
from diffusers.utils import logging as diffusers_logging
from common.logs import configure_json_logging
from common import progress
configure_json_logging()
logging.getLogger("flux").info("own line")
warnings.warn("a library warning")
transformers_logging.get_logger("transformers.models.t5").warning("transformers line")
diffusers_logging.get_logger("diffusers.pipelines.flux").warning("diffusers line")
progress.log_event(logging.getLogger("flux"), progress.STEP_STARTED, "compiling transformer",
                   kind=progress.GRAPHS, step="transformer", index=3, count=4)
"""


def test_every_stderr_line_is_json_the_libraries_and_warnings_included() -> None:
    result = subprocess.run([sys.executable, "-c", NOISY_PROCESS], capture_output=True, text=True, check=True,
                            cwd=REPO)
    lines = result.stderr.splitlines()
    records = [json.loads(line) for line in lines]
    messages = [record["message"] for record in records]
    assert "own line" in messages
    assert "transformers line" in messages and "diffusers line" in messages
    assert any("a library warning" in message for message in messages)
    events = [progress.read_event(line) for line in lines]
    assert [event["step"] for event in events if event] == ["transformer"]


def test_events_read_back_and_other_lines_do_not() -> None:
    record = logging.LogRecord("flux", logging.INFO, __file__, 1, "published", None, None)
    record.fields = {progress.EVENT_FIELD: progress.PUBLISHED, "kind": progress.WEIGHTS, "elapsed_s": 12.5}
    event = progress.read_event(JsonFormatter().format(record))
    assert (event["event"], event["kind"], event["elapsed_s"]) == (progress.PUBLISHED, progress.WEIGHTS, 12.5)
    assert progress.read_event("plain text") is None
    assert progress.read_event(json.dumps({"message": "no event"})) is None
    assert progress.read_event(json.dumps({"event": "made up"})) is None


def test_an_unknown_event_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown progress event 'halfway'"):
        progress.log_event(logging.getLogger("flux"), "halfway", "message")
