"""Compile Jobs survive disruptions and fail fast on bad options; serving pods stop waiting for graphs
once their Job can no longer publish them (issue 13, item 6)."""

import subprocess

import pytest

from infra.naming import COMPILE, SERVE, workload_name
from planning.offline import manifest
from infra.pods import COMPILE_START_MINUTES, WorkloadSettings, WAIT_SCRIPT, wait_for_graphs_limit_seconds
from common.artifacts import EXIT_NOT_PUBLISHED
from model.compile import EXIT_USAGE, main as compile_main

JOB = "kubernetes:batch/v1:Job"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"


def declared(rendering, type_):
    return {manifest(r)["metadata"]["name"]: manifest(r) for r in rendering.of_type(type_)}


def test_disruptions_spend_no_retry_and_bad_options_fail_the_job_at_once(rendering):
    for job in declared(rendering, JOB).values():
        spec = job["spec"]
        (container,) = spec["template"]["spec"]["containers"]
        ignore, fail = spec["podFailurePolicy"]["rules"]
        assert ignore == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
        assert fail == {"action": "FailJob",
                        "onExitCodes": {"containerName": container["name"], "operator": "In", "values": [EXIT_USAGE]}}
        # Kubernetes accepts a podFailurePolicy only on pods that are never restarted in place.
        assert spec["template"]["spec"]["restartPolicy"] == "Never"
        assert spec["podReplacementPolicy"] == "Failed"


def test_the_exit_code_the_job_fails_fast_on_is_the_compile_cli_s_usage_error(rendering, capsys):
    job = next(iter(declared(rendering, JOB).values()))
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    options = command[command.index("model.compile") + 1:]
    shape = options.index("--shape") + 1
    # The Job's own command with one bad option: the CLI's answer is the status the policy names.
    with pytest.raises(SystemExit) as exited:
        compile_main([*options[:shape], "100x100", *options[shape + 1:]])
    assert exited.value.code == EXIT_USAGE
    assert "100x100" in capsys.readouterr().err


def test_serving_pods_wait_for_graphs_exactly_as_long_as_their_job_can_publish(rendering, stack_config):
    jobs = declared(rendering, JOB)
    for name, deployment in declared(rendering, DEPLOYMENT).items():
        shape = name.removeprefix(workload_name(SERVE, ""))
        (wait,) = deployment["spec"]["template"]["spec"]["initContainers"]
        limit, job_name = wait["command"][4:6]
        assert job_name == workload_name(COMPILE, shape) and job_name in jobs
        assert int(limit) == wait_for_graphs_limit_seconds(WorkloadSettings.of(stack_config)) == \
            jobs[job_name]["spec"]["activeDeadlineSeconds"] + COMPILE_START_MINUTES * 60


def test_the_wait_gives_up_at_its_limit_with_one_line_naming_the_job(tmp_path):
    calls = tmp_path / "calls"
    unpublished = f"echo x >> {calls}; exit {EXIT_NOT_PUBLISHED}"
    result = subprocess.run(["sh", "-c", WAIT_SCRIPT, "wait-for-graphs", "0", "flux-compile-256x144",
                             "sh", "-c", unpublished], capture_output=True, text=True, timeout=10)
    assert result.returncode == EXIT_NOT_PUBLISHED
    assert calls.read_text().split() == ["x"]
    (line,) = result.stderr.splitlines()
    assert line.startswith("wait-for-graphs: gave up after 0s: ")
    assert "kubectl describe job flux-compile-256x144" in line
