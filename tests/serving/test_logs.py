"""The server process's stderr: JSON lines only, whatever writes them (uvicorn, diffusers, transformers,
torch's warnings, the HTTP layer), and never a user's prompt, not even the tail a library quotes when it
truncates one. ``python -m serving`` as a pod runs it, on an artifact compiled beforehand (the compile's
own processes are not the server's)."""

from __future__ import annotations

import json
import signal
import socket

import httpx

from common import endpoints
from serving.logs import TRUNCATION_WARNING

from .conftest import server_process

# Far past CLIP's 77 tokens and the artifact's text length in T5 tokens: both encoders truncate it, and
# diffusers warns for each, quoting what it cut.
MARKERS = ("zebracrossing", "quokkaselfie")
LONG_PROMPT = "a red fox in the snow " * 60 + " ".join(MARKERS)


def test_the_server_s_stderr_is_json_lines_without_prompts(tiny_artifact_dir):
    with server_process("--graphs", str(tiny_artifact_dir)) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            server.wait_ready(client)
            assert client.post(endpoints.GENERATE, json={"prompt": LONG_PROMPT, "num_inference_steps": 2}).is_success
            assert client.post(endpoints.OPENAI_IMAGES, json={"prompt": LONG_PROMPT, "quality": "low"}).is_success
            # Refused ones too: a 400 names the field, never the input.
            assert client.post(endpoints.GENERATE, json={"prompt": LONG_PROMPT, "num_inference_steps": 0}).status_code == 400
            assert client.get(f"{endpoints.STATIC}/x%00").status_code == 404
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as malformed:
            malformed.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
            assert malformed.recv(1024).startswith(b"HTTP/1.1 400 ")
        assert server.terminate() == -signal.SIGTERM
        stdout = server.process.stdout.read()

    lines = server.stderr_lines
    assert stdout == ""
    not_json = [line for line in lines if not _is_json_object(line)]
    assert not not_json, f"{len(not_json)} of {len(lines)} lines are not JSON: {not_json[:3]}"
    text = "".join(lines)
    assert not any(marker in text for marker in MARKERS), "a prompt reached the log"
    truncations = [json.loads(line) for line in lines if TRUNCATION_WARNING in line]
    assert {record["logger"] for record in truncations} == {"diffusers.pipelines.flux.pipeline_flux"}
    assert any("CLIP" in record["message"] for record in truncations)
    assert any("max_sequence_length" in record["message"] for record in truncations)
    assert all(record["message"].endswith("(the truncated prompt text is not logged)") for record in truncations)


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
