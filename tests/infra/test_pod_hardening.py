"""Pod hardening of every workload the program renders, and checkov on every rendered object.

checkov 3.3.30 runs in its own virtualenv (requirements-checkov.txt; `.ci/run` creates
`.venv-checkov`), on the committed plans/<stack>/kubernetes/*.yaml, which test_plan.py keeps
equal to what the program renders. A check is skipped only by checkov's own annotation on the
object (`checkov.io/skip<N>: CKV_K8S_<id>=<reason>`), set by the program, never by a global list.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from planning.offline import REPO_ROOT, manifest
from planning.checks import check
from planning.checks.objects import pod_templates
from infra.pods import HF_TOKEN_PATH_ENV, TMP_MOUNT

PLANS = REPO_ROOT / "plans"
CHECKOV_ENV = "CHECKOV"
REPO_CHECKOV = REPO_ROOT / ".venv-checkov" / "bin" / "checkov"
CHECKOV_VERSION = (REPO_ROOT / "requirements-checkov.txt").read_text().split("checkov==")[1].split()[0]


def checkov_binary() -> Path:
    configured = os.environ.get(CHECKOV_ENV)
    binary = Path(configured) if configured else REPO_CHECKOV
    if not binary.exists():
        pytest.fail(f"checkov not found at {binary}: run .ci/run (it creates .venv-checkov from "
                    f"requirements-checkov.txt) or set {CHECKOV_ENV} to a checkov {CHECKOV_VERSION} binary")
    return binary


def run_checkov(directory: Path) -> dict:
    """checkov's JSON report on the Kubernetes manifests of one directory (no network: --skip-download)."""
    result = subprocess.run(
        [str(checkov_binary()), "--directory", str(directory), "--framework", "kubernetes", "--output", "json",
         "--skip-download"], capture_output=True, text=True, timeout=300)
    # checkov exits 1 when a check fails; anything else that is not 0 is a failed run.
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["summary"]["checkov_version"] == CHECKOV_VERSION
    return report


SEEDED = "seeded-job.yaml"
_reports = {}


def seeded_job(rendering) -> dict:
    """A compile Job with the two defects this issue removed, in a namespace of its own."""
    job = copy.deepcopy(manifest(next(r for r in rendering.of_type("kubernetes:batch/v1:Job"))))
    job["metadata"]["namespace"] = "seeded"
    container = job["spec"]["template"]["spec"]["containers"][0]
    del container["securityContext"]["readOnlyRootFilesystem"]
    container["env"].append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}})
    return job


@pytest.fixture(scope="session")
def checkov_report(stack, rendering, tmp_path_factory):
    """One checkov run per stack: its committed objects, plus the seeded Job that shows checkov looks."""
    if stack not in _reports:
        directory = tmp_path_factory.mktemp(f"checkov-{stack}")
        for path in (PLANS / stack / "kubernetes").glob("*.yaml"):
            (directory / path.name).write_text(path.read_text())
        (directory / SEEDED).write_text(yaml.safe_dump(seeded_job(rendering)))
        _reports[stack] = run_checkov(directory)
    return _reports[stack]


def _results(report: dict, kind: str, seeded: bool) -> list[dict]:
    return [result for result in report["results"][kind] if (Path(result["file_path"]).name == SEEDED) == seeded]


def test_checkov_passes_every_rendered_object(stack, checkov_report):
    failed = [f"{f['check_id']} {f['resource']} ({f['file_path']}): {f['check_name']}"
              for f in _results(checkov_report, "failed_checks", seeded=False)]
    assert failed == []
    assert checkov_report["summary"]["parsing_errors"] == 0
    # The pods were checked, not just parsed.
    checked = {Path(result["file_path"]).name for result in _results(checkov_report, "passed_checks", seeded=False)}
    workloads = {path.name for path in (PLANS / stack / "kubernetes").glob("*.yaml")
                 if yaml.safe_load(path.read_text())["kind"] in ("Job", "Deployment")}
    assert workloads and workloads <= checked


def test_checkov_flags_a_writable_root_and_a_token_variable(checkov_report):
    failed = {f["check_id"] for f in _results(checkov_report, "failed_checks", seeded=True)}
    assert {"CKV_K8S_22", "CKV_K8S_35"} <= failed


def test_every_checkov_skip_is_an_annotation_with_its_reason(stack, checkov_report):
    for skipped in _results(checkov_report, "skipped_checks", seeded=False):
        obj = yaml.safe_load((PLANS / stack / "kubernetes" / Path(skipped["file_path"]).name).read_text())
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        reasons = [value.split("=", 1)[1] for key, value in annotations.items()
                   if key.startswith("checkov.io/skip") and value.split("=", 1)[0] == skipped["check_id"]]
        assert reasons and all(reason.strip() for reason in reasons), skipped["check_id"]


def workload_pods(rendering):
    return pod_templates([manifest(r) for r in rendering.kubernetes_objects()])


def test_root_filesystems_are_read_only_and_written_directories_are_pod_scoped_volumes(rendering):
    """Written directories are emptyDirs, or a compile's scratch: a gp3 volume created and deleted with its pod."""
    pods = [pod for pod in workload_pods(rendering) if pod.namespace == "flux"]
    assert pods
    for pod in pods:
        volumes = {volume["name"]: volume for volume in pod.spec["volumes"]}
        for container in pod.containers():
            where = f"{pod.owner['metadata']['name']} {container['name']}"
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, where
            mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
            env = {item["name"]: item.get("value") for item in container.get("env", [])}
            written = [TMP_MOUNT, env["HOME"], *(env[key] for key in ("TMPDIR", "HF_HOME") if key in env)]
            command = container["command"]
            written += [command[command.index("--scratch") + 1]] if "--scratch" in command else []
            for directory in written:
                mount = max((path for path in mounts if directory == path or directory.startswith(path + "/")),
                            key=len, default=None)
                assert mount is not None and ("emptyDir" in mounts[mount] or "ephemeral" in mounts[mount]), \
                    f"{where}: {directory}"


def test_the_token_is_a_file_never_a_variable(rendering):
    for pod in workload_pods(rendering):
        for container in pod.containers():
            names = {item["name"] for item in container.get("env", [])}
            assert not names & {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"}, pod.owner["metadata"]["name"]
            assert all("secretKeyRef" not in (item.get("valueFrom") or {}) for item in container.get("env", []))


def test_the_posture_check_accepts_a_token_file_path_but_not_a_literal_token(rendering):
    """The security check flags credential-named variables with literal values, unless they name a file
    of a mounted Secret (HF_TOKEN_PATH)."""
    assert check(rendering) == []
    seeded = copy.deepcopy(rendering)
    job = next(r for r in seeded.of_type("kubernetes:batch/v1:Job"))
    container = job.inputs["spec"]["template"]["spec"]["containers"][0]
    # A literal path in place of the mounted file's (or, where no Job mounts a token, beside nothing).
    container["env"] = [item for item in container["env"] if item["name"] != HF_TOKEN_PATH_ENV] + [
        {"name": HF_TOKEN_PATH_ENV, "value": "/tmp/token"}]
    assert any(f"env {HF_TOKEN_PATH_ENV} is a literal" in problem.message for problem in check(seeded))
