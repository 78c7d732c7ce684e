"""``python -m serving``: choosing the artifact, refusing to start without one, and the local mode."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import socket
from pathlib import Path

import httpx
import pytest

from common.shapes import parse_shape
from common import endpoints
from model.artifacts import read_manifest
from model.families import TIMESTEP_DISTILLED
from model.keys import TINY_SCHNELL
from model.runtime import ServedArtifact
from serving.cli import LOCAL_SHAPE, NotPublished, artifacts_from_args, build_parser, main
from serving.logs import REQUEST_ID_HEADER

from .conftest import graphs_root_argv, server_process


def resolve(argv: list[str]) -> Path:
    parser = build_parser()
    return artifacts_from_args(parser.parse_args(argv), parser)[0]


def test_graphs_names_a_published_artifact_directory(tiny_artifact_dir):
    assert resolve(["--graphs", str(tiny_artifact_dir)]) == tiny_artifact_dir


def test_graphs_root_finds_exactly_the_directory_the_compile_options_resolve_to(
    tiny_artifact_dir, tiny_compile_options
):
    assert resolve(graphs_root_argv(tiny_artifact_dir.parent, tiny_compile_options)) == tiny_artifact_dir


def test_refuses_to_start_when_nothing_is_published(tiny_artifact_dir, tiny_compile_options, tmp_path, caplog):
    with pytest.raises(NotPublished, match="no manifest.json"):
        resolve(["--graphs", str(tmp_path)])
    # One option differs from the compile's, so the key (and directory) differs: never a stale load.
    argv = graphs_root_argv(tiny_artifact_dir.parent, tiny_compile_options)
    argv[argv.index("--max-text-length") + 1] = "64"
    with caplog.at_level(logging.ERROR):
        argv += ["--port", "0"]
        assert main(argv) == 1
    assert "not serving: nothing published at" in caplog.text


def test_refuses_to_start_when_the_graphs_weights_are_not_published(tiny_artifact_dir, tmp_path, caplog):
    graphs = tmp_path / tiny_artifact_dir.name
    shutil.copytree(tiny_artifact_dir, graphs)
    with caplog.at_level(logging.ERROR):
        assert main(["--graphs", str(graphs), "--port", "0"]) == 1
    assert f"not serving: manifest.json missing in {tmp_path / 'weights'}" in caplog.text


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "one of the arguments --graphs --graphs-root --local is required"),
        (["--graphs", "dir", "--graphs-root", "root"], "not allowed with argument"),
        (["--graphs", "dir", "--shape", "256x144"], "--graphs takes no compile options"),
        (["--local", "--model", "black-forest-labs/FLUX.1-dev"],
         "--local serves a tiny model on the CPU: of the compile options it takes --shape and --model tiny or "
         "tiny-schnell only"),
        (["--local", "--model", "tiny-schnell", "--revision", "d" * 40], "--local serves a tiny model"),
        (["--local", "--lora", f"id=a/b,revision={'d' * 40},scale=1"], "--local serves a tiny model"),
        (["--local", "--dtype", "bfloat16"], "--local serves a tiny model"),
        (["--graphs-root", "root", "--shape", "256x144"], "needs at least --shape and --model"),
        (["--graphs-root", "root", "--shape", "65x64", "--model", "tiny"], "has height 65"),
        (["--graphs", "dir", "--queue-size", "-1"], "-1 is negative"),
        (["--graphs", "dir", "--request-timeout", "0"], "0 is not a positive number"),
        (["--graphs", "dir", "--request-timeout", "nan"], "nan is not a positive number"),
        (["--graphs", "dir", "--port", "70000"], "70000 is not a TCP port: 0 (any free port) to 65535"),
        (["--graphs", "dir", "--port", "http"], "'http' is not an integer"),
        (["--graphs", "dir", "--max-body-bytes", "0"], "0 is below 1"),
        (["--graphs", "dir", "--max-images", "0"], "0 is below 1"),
        (["--graphs", "dir", "--read-timeout", "-1"], "-1 is not a positive number"),
        (["--graphs", "dir", "--unready-after-errors", "0"], "argument --unready-after-errors: 0 is below 1"),
        (["--graphs", "dir", "--unready-after-errors", "three"], "'three' is not an integer"),
        (["--graphs", "dir", "--self-test-interval", "0"], "argument --self-test-interval: 0 is not a positive"),
        (["--graphs", "dir", "--restart-after-self-tests", "0"], "argument --restart-after-self-tests: 0 is below 1"),
    ],
)
def test_bad_flags_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        resolve(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_local_mode_serves_the_tiny_schnell_too_with_its_family_s_text_length(tmp_path):
    compiled = resolve(["--local", "--model", TINY_SCHNELL, "--shape", "80x64", "--cache-dir", str(tmp_path)])
    served = ServedArtifact.read(compiled)
    assert (served.model, served.family, str(served.shape)) == (TINY_SCHNELL, TIMESTEP_DISTILLED, "80x64")
    assert read_manifest(compiled)["key"]["max_text_length"] == TIMESTEP_DISTILLED.max_text_length


def test_bad_server_flags_exit_2_before_anything_else(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--local", "--port", "70000"])
    assert exit_.value.code == 2
    assert "argument --port: 70000 is not a TCP port" in capsys.readouterr().err


def test_a_port_in_use_fails_in_one_line_before_anything_is_loaded_or_compiled(tmp_path, caplog):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with caplog.at_level(logging.ERROR):
            assert main(["--local", "--cache-dir", str(tmp_path), "--port", str(port)]) == 1
    (line,) = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert line == f"not serving: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert list(tmp_path.iterdir()) == [], "the tiny model was not compiled"


def test_local_mode_compiles_the_tiny_model_then_serves_it_on_loopback(tmp_path, png_size):
    """The README's "no AWS" quickstart, as a user runs it, then stopped the way Kubernetes stops it."""
    with server_process("--local", "--cache-dir", str(tmp_path)) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            server.wait_ready(client)
            response = client.post(
                endpoints.GENERATE,
                json={"prompt": "a red fox", "num_inference_steps": 2, "seed": 5},
                headers={REQUEST_ID_HEADER: "trace-42"},
            )
        assert response.status_code == 200
        assert response.headers[REQUEST_ID_HEADER] == "trace-42"
        shape = parse_shape(LOCAL_SHAPE)
        assert png_size(response.json()["image"]) == (shape.width, shape.height)
        # Uvicorn shuts down gracefully, then re-raises the signal so the exit status tells why.
        assert server.terminate() == -signal.SIGTERM
    log_lines = server.stderr_lines
    records = [json.loads(line) for line in log_lines if line.startswith("{")]
    assert any(record["message"] == "Application shutdown complete." for record in records)
    (generation,) = [record for record in records if record.get("request_id") == "trace-42"]
    assert (generation["route"], generation["status"], generation["seed"], generation["steps"]) == (
        endpoints.GENERATE,
        200,
        5,
        2,
    )
    assert generation["latency_s"] > 0
    assert any("published" in line for line in log_lines), "the tiny model was compiled into the cache"
    assert list(tmp_path.glob("*/manifest.json"))
