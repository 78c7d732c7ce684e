"""The image's build recipe, checked as text: there is no Docker engine in CI."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

from common.image import CONTAINER_UID, NEURON_DLC_IMAGE
from common.endpoints import DEFAULT_PORT

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "serving" / "Dockerfile").read_text()
INSTRUCTIONS = [
    line.strip()
    for line in re.sub(r"\\\n", " ", DOCKERFILE).splitlines()
    if line.strip() and not line.lstrip().startswith("#")
]


def instructions(keyword: str) -> list[str]:
    return [line[len(keyword) :].strip() for line in INSTRUCTIONS if line.split()[0] == keyword]


def test_base_image_defaults_to_the_pinned_dlc():
    assert INSTRUCTIONS[0] == f"ARG BASE_IMAGE={NEURON_DLC_IMAGE}"
    assert instructions("FROM") == ["${BASE_IMAGE}"]


def copied_sources() -> list[str]:
    """Every repository path the image copies (the last word of a COPY is its destination)."""
    return [source for copy in instructions("COPY") for source in copy.split()[:-1]]


def test_copies_the_runtime_and_nothing_of_the_deploy_program():
    assert "model/ model/" in instructions("COPY")
    assert "serving/ serving/" in instructions("COPY")
    assert "common/ common/" in instructions("COPY")
    assert not [source for source in copied_sources() if source.startswith(("infra", "planning"))]


def test_the_build_context_lets_in_everything_the_image_copies():
    # The ignore file excludes everything ("*"), then re-includes paths with "!".
    ignore_lines = (REPO / "serving" / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore_lines
    included = [line[1:] for line in ignore_lines if line.startswith("!")]
    for source in copied_sources():
        assert any(source == path or source.startswith(path) for path in included), source


def test_both_entrypoints_import_from_what_the_image_copies(tmp_path):
    for source in copied_sources():
        destination = tmp_path / source
        destination.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, destination, dirs_exist_ok=True)
        else:
            shutil.copy(REPO / source, destination)
    imports = subprocess.run(
        [sys.executable, "-c", "import serving.cli, model.compile"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert imports.returncode == 0, imports.stderr


def test_installs_the_pinned_serving_requirements_without_upgrading():
    installs = [run for run in instructions("RUN") if "pip install" in run]
    assert len(installs) == 1
    assert "-r serving/requirements.txt" in installs[0]
    assert " -U" not in installs[0] and "--upgrade" not in installs[0]
    for line in (REPO / "serving" / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert "==" in line, f"unpinned requirement {line!r}"


def test_replaces_the_dlc_entrypoint_and_runs_as_a_numeric_non_root_user():
    assert instructions("ENTRYPOINT") == ['["python", "-m", "serving", "--host", "0.0.0.0"]']
    assert instructions("CMD") == []
    (user,) = instructions("USER")
    # The pods run as this uid and the graph volumes present their files as it (common.image).
    assert user == f"{CONTAINER_UID}:{CONTAINER_UID}"
    assert f"useradd --uid {CONTAINER_UID} --gid {CONTAINER_UID}" in DOCKERFILE
    assert instructions("EXPOSE") == [str(DEFAULT_PORT)]
