"""Compile Jobs survive disruptions and fail fast on bad options; serving pods stop waiting for graphs
once their Job can no longer publish them (issue 13, item 6). Jobs are named by the artifact key, which
changes whenever the runtime's key does, and serving does not wait for the Job resource (item 1)."""

import dataclasses
import re
import subprocess

import pytest

from infra import pods
from infra.naming import SERVE, workload_name
from planning.offline import manifest
from infra.pods import (
    COMPILE_JOB_IMAGE_FIELDS, COMPILE_START_MINUTES, WorkloadSettings, WAIT_SCRIPT, artifact_key_args,
    compile_job_name, deployment_deadline_minutes, rollout_minutes, wait_for_graphs_limit_seconds,
)
from common.artifacts import EXIT_NOT_PUBLISHED, MODEL_LIBRARIES
from common.neuron import NEURON_FAMILIES
from common.shapes import MAX_SIDE, Shape, parse_shape
from common.artifacts import EXIT_USAGE
from model.compile import main as compile_main
from model.keys import CompileOptions, graphs_key

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
        shape = parse_shape(name.removeprefix(workload_name(SERVE, "")))
        (wait,) = deployment["spec"]["template"]["spec"]["initContainers"]
        limit, job_name = wait["command"][4:6]
        assert job_name == compile_job_name(WorkloadSettings.of(stack_config), shape) and job_name in jobs
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


# --- the artifact key names the Jobs ---------------------------------------------------------------

def runtime_key(settings, shape):
    """model.compile's key for the options the shape's pods pass (artifact_key_args), as the image's
    distributions make it (the neuron_distributions fixture)."""
    args = artifact_key_args(settings, shape)
    given = {flag.removeprefix("--").replace("-", "_"): value for flag, value in zip(args[::2], args[1::2])}
    typed = {"shape": parse_shape, "tp_degree": int, "max_text_length": int}
    return graphs_key(CompileOptions(**{field: typed.get(field, str)(value) for field, value in given.items()}))


def other(values, current):
    return next(value for value in values if value != current)


# One change of each setting artifact_key_args reads (the backend is always neuron).
KEY_SETTING_CHANGES = {
    "model": lambda s: dataclasses.replace(s, model=s.model.model_copy(update={"id": s.model.id + "-other"})),
    "revision": lambda s: dataclasses.replace(s, model=s.model.model_copy(update={
        "revision": other(("0" * 40, "1" * 40), s.model.revision)})),
    "max_text_length": lambda s: dataclasses.replace(s, model=s.model.model_copy(update={
        "max_text_length": s.model.max_text_length // 2})),
    "dtype": lambda s: dataclasses.replace(s, dtype=other(("bfloat16", "float32"), s.dtype)),
    "target": lambda s: dataclasses.replace(s, serving=s.serving.model_copy(update={
        "pool": other(NEURON_FAMILIES, s.serving.pool)})),
    "tp_degree": lambda s: dataclasses.replace(s, compile=s.compile.model_copy(update={
        "tensor_parallel": s.compile.tensor_parallel * 2})),
}


def test_the_runtime_key_holds_the_key_options_the_toolchain_and_the_compile_code_version(stack_config,
                                                                                         neuron_distributions):
    """What artifact_key hashes covers every field of model.compile's key: a field added there
    without a deploy-time source fails here. (The compile API follows from the backend and target.)"""
    settings, shape = WorkloadSettings.of(stack_config), stack_config.shapes[0]
    options = {flag.removeprefix("--").replace("-", "_") for flag in artifact_key_args(settings, shape)[::2]}
    assert set(runtime_key(settings, shape)) == options | {"toolchain", "compile_code_version", "implementation"}


@pytest.mark.parametrize("field", KEY_SETTING_CHANGES)
def test_each_key_setting_changes_the_runtime_key_and_the_job_name(stack_config, neuron_distributions, field):
    settings, shape = WorkloadSettings.of(stack_config), stack_config.shapes[0]
    changed = KEY_SETTING_CHANGES[field](settings)
    before, after = runtime_key(settings, shape), runtime_key(changed, shape)
    assert {name for name in before if before[name] != after[name]} == {field}
    assert compile_job_name(changed, shape) != compile_job_name(settings, shape)


def test_the_shape_changes_the_job_name_beyond_its_prefix(stack_config):
    settings, (first, second) = WorkloadSettings.of(stack_config), stack_config.shapes[:2]
    assert compile_job_name(settings, first).rsplit("-", 1)[1] != compile_job_name(settings, second).rsplit("-", 1)[1]


def test_settings_outside_the_key_keep_the_job_name(stack_config, neuron_distributions):
    settings, shape = WorkloadSettings.of(stack_config), stack_config.shapes[0]
    changed = dataclasses.replace(
        settings, compile=settings.compile.model_copy(update={"timeout_minutes": settings.compile.timeout_minutes + 60}),
        serving=settings.serving.model_copy(update={"max_replicas": settings.serving.max_replicas + 1}))
    assert runtime_key(changed, shape) == runtime_key(settings, shape)
    assert compile_job_name(changed, shape) == compile_job_name(settings, shape)


@pytest.mark.parametrize("name, value", [
    ("NEURON_DLC_IMAGE", "public.ecr.aws/neuron/pytorch-inference-neuronx:2.9.0-neuronx-py312-sdk2.32.0-ubuntu24.04"),
    ("NEURON_SDK_VERSION", "2.32.0"),
    ("COMPILE_CODE_VERSION", pods.COMPILE_CODE_VERSION + 1),
])
def test_the_toolchain_and_the_compile_code_version_change_the_job_name(stack_config, monkeypatch, name, value):
    """The runtime's key reads these from its image and model.compile (the tests of model.compile show
    that they change it); here they change the Job's name."""
    settings, shape = WorkloadSettings.of(stack_config), stack_config.shapes[0]
    before = compile_job_name(settings, shape)
    monkeypatch.setattr(pods, name, value)
    assert compile_job_name(settings, shape) != before


def test_a_model_library_pin_changes_the_job_name_and_other_pins_do_not(stack_config, monkeypatch, tmp_path):
    settings, shape = WorkloadSettings.of(stack_config), stack_config.shapes[0]
    requirements = pods.RUNTIME_REQUIREMENTS.read_text()
    pins = pods.model_library_pins(requirements)
    assert pins and set(pins) <= set(MODEL_LIBRARIES)
    before = compile_job_name(settings, shape)
    edited = tmp_path / "requirements.txt"
    monkeypatch.setattr(pods, "RUNTIME_REQUIREMENTS", edited)
    edited.write_text(requirements + "\nsome-serving-library==1.0\n")
    assert compile_job_name(settings, shape) == before
    library, version = next(iter(pins.items()))
    edited.write_text(requirements.replace(f"{library}=={version}", f"{library}=={version}.post1"))
    assert compile_job_name(settings, shape) != before


DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def test_the_longest_job_name_is_a_dns_label(stack_config):
    # The Job controller puts the name in its pods' `job-name` label: a label value, at most 63 characters.
    assert DNS_LABEL.match(compile_job_name(WorkloadSettings.of(stack_config), Shape(MAX_SIDE, MAX_SIDE)))


def test_a_new_image_changes_no_job_and_a_replaced_one_goes_before_its_successor(rendering):
    for job in rendering.of_type(JOB):
        assert job.name == manifest(job)["metadata"]["name"]
        assert job.ignore_changes == COMPILE_JOB_IMAGE_FIELDS
        assert manifest(job)["spec"]["template"]["spec"]["containers"][0]["image"] == rendering.outputs["image"]
        assert job.delete_before_replace


def test_serving_waits_for_the_published_key_not_for_the_job(rendering, stack_config):
    settings, jobs = WorkloadSettings.of(stack_config), {job.urn for job in rendering.of_type(JOB)}
    for deployment in rendering.of_type(DEPLOYMENT):
        assert not jobs & set(deployment.dependencies), deployment.name
        shape = parse_shape(deployment.name.removeprefix(workload_name(SERVE, "")))
        deadline = deployment_deadline_minutes(settings, shape)
        assert deadline * 60 == wait_for_graphs_limit_seconds(settings) + rollout_minutes(
            settings.serving_pool.family, shape) * 60
        assert manifest(deployment)["spec"]["progressDeadlineSeconds"] == deadline * 60
        assert deployment.custom_timeouts == {"create": f"{deadline}m", "update": f"{deadline}m"}
