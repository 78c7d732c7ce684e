"""scripts/deploy, scripts/destroy and scripts/status check every tool they need before they do anything, and say
in one line per missing tool what it is and how to get it (scripts/tools.sh). Run with a PATH holding only the
basic tools the scripts use before their checks: no pulumi, aws or kubectl."""

import shutil
import subprocess

import pytest

from planning.offline import REPO_ROOT, stack_names

MISSING = {
    "pulumi": "pulumi is not installed: get the Pulumi CLI, https://www.pulumi.com/docs/install/",
    "aws": "aws is not installed (the kubeconfig runs aws eks get-token): get the AWS CLI v2, "
           "https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html",
    "kubectl": "kubectl is not installed: get it, https://kubernetes.io/docs/tasks/tools/",
    "python": "no virtualenv at /nonexistent/.venv/bin/python: python3 -m venv .venv && .venv/bin/pip install "
              "-r requirements-dev.txt (README, Quickstart)",
}


BASICS = ("env", "bash", "dirname", "sed", "tr", "cat")


@pytest.fixture
def bare_path(tmp_path):
    """A PATH with the basics only."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in BASICS:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return str(bin_dir)


@pytest.mark.parametrize("script, tools", [("deploy", ["pulumi", "aws", "python"]),
                                           ("destroy", ["pulumi", "aws", "kubectl"]),
                                           ("status", ["pulumi", "aws", "kubectl", "python"])])
def test_a_script_names_each_missing_tool_and_how_to_get_it_before_doing_anything(tmp_path, bare_path, script,
                                                                                 tools):
    env = {"PATH": bare_path, "HOME": str(tmp_path), "PYTHON": "/nonexistent/.venv/bin/python"}
    result = subprocess.run([str(REPO_ROOT / "scripts" / script), "dev"], env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [MISSING[tool] for tool in tools]


def test_a_stack_without_its_file_is_named_with_the_stacks_there_are(bare_path):
    result = subprocess.run([str(REPO_ROOT / "scripts" / "status"), "qa"], env={"PATH": bare_path},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and result.stderr == f"no Pulumi.qa.yaml: stacks are {' '.join(stack_names())} \n"


def test_the_scripts_and_pulumi_use_the_readmes_one_virtualenv():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "python3 -m venv .venv" in readme
    assert "virtualenv: .venv\n" in (REPO_ROOT / "Pulumi.yaml").read_text()
    assert 'python="${PYTHON:-.venv/bin/python}"' in (REPO_ROOT / "scripts" / "tools.sh").read_text()
