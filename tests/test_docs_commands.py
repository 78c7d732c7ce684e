"""Every command the README and docs/ show runs as written from a fresh clone (issue 18): the shell and Python
examples are extracted from the Markdown and run, in order, in a copy of the repository's files (what a clone
has) with the README's `.venv`, a fresh HOME, and `python -m serving --local` started where a page starts it. The
commands that need what no test machine has (an AWS account, a deployed stack, the Pulumi CLI, network installs)
are listed by what they need, so a new command that needs none runs here, and fails here if it is wrong.

docs/model.md is left out: its commands are the compile's (model/, its CLI being changed for issue 17) and run
inside the Neuron image; tests/model covers that CLI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from planning.offline import REPO_ROOT, run_program

PAGES = [REPO_ROOT / "README.md", *sorted(path for path in (REPO_ROOT / "docs").glob("*.md") if path.name != "model.md")]
LOCAL_SERVER = ".venv/bin/python -m serving --local"
LOCAL_URL = "http://127.0.0.1:8000"
# Why a command does not run here, by the first pattern it matches (a whole block, when it holds a loop).
NOT_HERE = [
    (r"\bpulumi\b|\$URL\b|\bos\.environ\[\"URL\"\]", "a deployed stack (the Pulumi CLI, an AWS account)"),
    (r"^(kubectl|aws)\b", "a cluster and an AWS account"),
    (r"^scripts/(deploy|destroy|status)\b|^HF_TOKEN=\S+ scripts/", "an AWS account"),
    (r"^export PULUMI_CONFIG_PASSPHRASE=", "a deployed stack"),
    (r"pip install|^bash \.ci/run", "installs from the network (the .venv here is what it makes)"),
    (r"^\.venv/bin/python -m pytest\b", "the test suite this test is part of"),
    (r"^git (add|commit)\b", "a commit in the clone"),
    (r"\bDIR --steps\b", "a published Neuron artifact (DIR)"),
]
SHELL_BLOCK = re.compile(r"^```(sh|bash)\n(.*?)^```", re.S | re.M)
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


@dataclass(frozen=True)
class Example:
    page: str
    language: str  # "sh" or "python"
    text: str

    @property
    def not_here(self) -> str | None:
        for pattern, reason in NOT_HERE:
            if re.search(pattern, self.text, re.M):
                return reason
        return None


def _commands(block: str) -> list[str]:
    """A shell block's commands: continued lines joined, comment lines and trailing comments dropped (a loop is
    kept whole)."""
    if re.search(r"^\s*(for|while) ", block, re.M):
        return [block]
    commands, current = [], ""
    for line in block.splitlines():
        if not current and line.lstrip().startswith("#"):
            continue
        current += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            commands.append(re.sub(r"\s+#[^'\"]*$", "", current).strip())
            current = ""
    return [command for command in commands if command]


def examples() -> list[Example]:
    found = []
    for page in PAGES:
        text, name = page.read_text(), page.relative_to(REPO_ROOT).as_posix()
        blocks = sorted([(m.start(), "sh", m.group(2)) for m in SHELL_BLOCK.finditer(text)]
                        + [(m.start(), "python", m.group(1)) for m in PYTHON_BLOCK.finditer(text)])
        for _, language, block in blocks:
            if language == "python":
                found.append(Example(name, language, block))
            else:
                found += [Example(name, language, command) for command in _commands(block)]
    return found


def test_every_example_is_extracted_and_each_one_not_run_here_says_what_it_needs():
    found = examples()
    assert {example.page for example in found} >= {"README.md", "docs/plan.md", "docs/serving.md"}
    runnable = [example for example in found if example.not_here is None]
    assert any(example.text == LOCAL_SERVER for example in runnable)
    assert any(example.text.startswith(".venv/bin/python -m planning") for example in runnable)
    assert any(example.text.startswith(".venv/bin/python -m bench.plan_scaling") for example in runnable)


def test_python_in_the_examples_is_the_readmes_virtualenv():
    """One virtualenv: a bare `python` or `pip` is whichever the reader's PATH finds."""
    for example in examples():
        if example.language == "sh":
            assert not re.search(r"(^|[;&|]\s*)(python|pip)\b", example.text), (example.page, example.text)


def _free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _fresh_clone(tmp_path: Path) -> Path:
    """The repository's files as a clone has them (tracked, and new ones not ignored), with the README's .venv."""
    clone = tmp_path / "clone"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    (clone / ".venv").symlink_to((REPO_ROOT / ".venv").resolve())
    return clone


class LocalServer:
    def __init__(self, clone: Path, env: dict):
        self.process = subprocess.Popen(["bash", "-c", LOCAL_SERVER], cwd=clone, env=env, start_new_session=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"{LOCAL_SERVER} exited: {self.process.stderr.read()[-2000:]}"
            try:
                with urllib.request.urlopen(f"{LOCAL_URL}/readyz", timeout=5) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        raise AssertionError(f"{LOCAL_SERVER} was not ready within 300 s")

    def stop(self):
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=60)


def _run(example: Example, clone: Path, env: dict) -> None:
    command = ["bash", "-c", example.text] if example.language == "sh" else [".venv/bin/python", "-c", example.text]
    done = subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{example.page}: {example.text}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    for written in re.findall(r"> (\S+\.png)\b|open\(\"(\S+\.png)\"", example.text):
        image = clone / next(filter(None, written))
        assert image.read_bytes().startswith(b"\x89PNG"), f"{example.page}: {example.text} wrote no PNG"


def test_the_examples_that_need_no_aws_run_as_written_from_a_fresh_clone(tmp_path):
    assert _free(8000), "port 8000 is taken: the README's local server binds it"
    clone = _fresh_clone(tmp_path)
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    ran: set[str] = set()
    for page in dict.fromkeys(example.page for example in examples()):
        server = None
        try:
            for example in (example for example in examples() if example.page == page and not example.not_here):
                if example.text == LOCAL_SERVER:
                    server = server or LocalServer(clone, env)
                elif example.text not in ran:
                    assert LOCAL_URL not in example.text or server, f"{page}: {example.text} before the server"
                    _run(example, clone, env)
                    ran.add(example.text)
        finally:
            if server:
                server.stop()
    assert ran


ERROR_ANSWER = json.dumps({"error": {"message": "the queue is full", "type": "rate_limit_exceeded"}})


def _decoders() -> list[str]:
    """Every documented way of writing an answer's image to a file: what follows the request in the pipeline."""
    commands = [example.text for example in examples() if example.language == "sh" and "base64 -d" in example.text]
    commands.append(run_program("dev").outputs["exampleRequest"])
    return [command.split("|", 1)[1] for command in commands]


@pytest.mark.parametrize("decoder", _decoders())
def test_an_example_that_gets_an_error_writes_no_image(tmp_path, decoder):
    """The answer of a server that refuses (a 429, a 400 about the size) holds no image: the example stops before
    it writes one, and never overwrites a good image from the example before."""
    image = tmp_path / re.search(r"> (\S+\.png)", decoder)[1]
    image.write_bytes(b"\x89PNG earlier")
    done = subprocess.run(["bash", "-c", decoder], cwd=tmp_path, input=ERROR_ANSWER, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode != 0 and image.read_bytes() == b"\x89PNG earlier"
    png = "iVBORw0KGgo="  # the PNG signature, base64
    answer = json.dumps({"image": png, "data": [{"b64_json": png}]})
    assert subprocess.run(["bash", "-c", decoder], cwd=tmp_path, input=answer, text=True, timeout=30).returncode == 0
    assert image.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
