"""Publishing Jobs survive disruptions and fail fast on bad options (issue 13, item 6). The graphs Jobs are
named by the artifact key, which changes whenever the runtime's key does, the weights Job by the weights key,
and serving does not wait for either Job resource (item 1; issue 18: nothing is awaited)."""

import dataclasses
import json
import re

import pytest

from infra import pods
from infra.naming import SERVE, workload_name
from planning.offline import manifest, run_program, stack_file_config
from tests.infra import compile_cli
from common import activation
from infra.pods import (
    COMPILE_JOB_IMAGE_FIELDS, COMPILE_START_MINUTES, WorkloadSettings, artifact_key_args, compile_job_name,
    deployment_deadline_minutes, model_args, publish_limit_seconds, resolve_args, rollout_minutes, weights_job_name,
    weights_job_spec,
)
from infra.config import LoraSource
from common.adapters import MERGING_FAMILIES, adapter_argument
from common.artifacts import MODEL_LIBRARIES
from common.neuron import NEURON_FAMILIES, NXDI, compile_api
from common.shapes import MAX_SIDE, Shape, parse_shape
from common.artifacts import EXIT_USAGE
from model.compile import build_parser, main as compile_main, options_from
from model.keys import CompileOptions, graphs_key, weights_key

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


def test_the_exit_code_the_job_fails_fast_on_is_the_compile_cli_s_usage_error(rendering, stack_config, capsys):
    settings, shape = WorkloadSettings.of(stack_config), stack_config.shapes[0]
    # The Jobs' key options with one bad one: the CLI's answer is the status the policy names.
    options = [*artifact_key_args(settings, shape), "--out", "/graphs"]
    options[options.index(str(shape))] = "100x100"
    with pytest.raises(SystemExit) as exited:
        compile_main(options)
    assert exited.value.code == EXIT_USAGE
    assert "100x100" in capsys.readouterr().err


def test_a_rollout_to_a_new_key_may_take_as_long_as_its_compile_and_a_rollout(rendering, stack_config):
    """Its pods stay gated while the key's Jobs compile: the Deployment's progress deadline covers the Jobs'
    node start and deadline, then the rollout (reported by the Deployment; nothing waits for it)."""
    settings, jobs = WorkloadSettings.of(stack_config), declared(rendering, JOB)
    for name, deployment in declared(rendering, DEPLOYMENT).items():
        if not name.startswith(workload_name(SERVE, "")):
            continue
        shape = parse_shape(name.removeprefix(workload_name(SERVE, "")))
        job = jobs[compile_job_name(settings, shape)]
        assert publish_limit_seconds(settings) == job["spec"]["activeDeadlineSeconds"] + COMPILE_START_MINUTES * 60
        assert deployment["spec"]["progressDeadlineSeconds"] == publish_limit_seconds(settings) + rollout_minutes(
            settings.serving_pool, shape) * 60


# --- the artifact key names the Jobs ---------------------------------------------------------------

def runtime_options(args):
    """The CompileOptions model.compile's own parser makes of options as the pods pass them: a shape's, or without
    --shape the weights Job's."""
    what = [] if "--shape" in args else ["--weights"]
    out = [] if "--out" in args else ["--out", "/graphs"]
    return options_from(build_parser().parse_args([*args, *what, *out]))


def runtime_key(settings, shape):
    """model.compile's key for the options the shape's pods pass (artifact_key_args), as the image's
    distributions make it (the neuron_distributions fixture)."""
    return graphs_key(runtime_options(artifact_key_args(settings, shape)))


def runtime_weights_key(settings):
    """model.compile's weights key for the options the weights Job passes (model_args, no shape)."""
    return weights_key(runtime_options(model_args(settings)))


def other(values, current):
    return next(value for value in values if value != current)


def other_target(current):
    """Another serving family, of the same compile API where there is one (trn1 -> trn1n; trn2 has none)."""
    same = [family for family in NEURON_FAMILIES if family != current and compile_api(family) == compile_api(current)]
    return (same or [other(NEURON_FAMILIES, current)])[0]


# One change of each setting artifact_key_args reads (the backend is always neuron).
KEY_SETTING_CHANGES = {
    "model": lambda s: dataclasses.replace(s, model=s.model.model_copy(update={"id": s.model.id + "-other"})),
    "revision": lambda s: dataclasses.replace(s, model=s.model.model_copy(update={
        "revision": other(("0" * 40, "1" * 40), s.model.revision)})),
    "max_text_length": lambda s: dataclasses.replace(s, model=s.model.model_copy(update={
        "max_text_length": s.model.max_text_length // 2})),
    "dtype": lambda s: dataclasses.replace(s, dtype=other(("bfloat16", "float32"), s.dtype)),
    "target": lambda s: dataclasses.replace(s, serving=s.serving.model_copy(update={
        "pool": other_target(s.serving.pool)})),
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


# What the compile API adds to the runtime's keys when it is NxD Inference's (model.keys._nxdi_fields).
NXDI_FIELDS = {"implementation", "toolchain", "context_parallel", "cfg_parallel"}


def changed_fields(before, after):
    return {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}


@pytest.mark.parametrize("field", KEY_SETTING_CHANGES)
def test_each_key_setting_changes_the_runtime_key_and_the_job_name(stack_config, neuron_distributions, field):
    settings, shape = WorkloadSettings.of(stack_config), stack_config.shapes[0]
    changed = KEY_SETTING_CHANGES[field](settings)
    if field == "max_text_length" and settings.compile_api == NXDI:
        # Not a setting on trn2: NxD Inference's T5 takes 512 tokens, and the compile refuses another length.
        with pytest.raises(ValueError, match="takes exactly 512 tokens"):
            runtime_key(changed, shape)
        return
    before, after = runtime_key(settings, shape), runtime_key(changed, shape)
    moved_api = compile_api(changed.serving.pool) != settings.compile_api
    # A target of another compile API changes the API and what it adds too (trn2 has no other NxD Inference one).
    assert changed_fields(before, after) == ({field} | (NXDI_FIELDS if moved_api else set()))
    assert compile_job_name(changed, shape) != compile_job_name(settings, shape)


@pytest.mark.parametrize("flag", ["--context-parallel", "--cfg-parallel"])
def test_the_trn2_degrees_are_key_options_of_trn2_pods_only(stack_config, neuron_distributions, flag):
    """On trn2 every pod passes both degrees (both are fields of its keys) and each changes the key and the Job's
    name; elsewhere the pods pass neither, so their keys and Jobs stay what they were."""
    settings, shape = WorkloadSettings.of(stack_config), stack_config.shapes[0]
    args = artifact_key_args(settings, shape)
    if settings.compile_api != NXDI:
        assert flag not in args
        return
    field = flag.removeprefix("--").replace("-", "_")
    assert args[args.index(flag) + 1] == str(getattr(settings.compile, field))
    others = {"context_parallel", "cfg_parallel"} - {field}
    changed = dataclasses.replace(settings, compile=settings.compile.model_copy(update={
        field: 2, **{name: 1 for name in others}}))
    before, after = runtime_key(settings, shape), runtime_key(changed, shape)
    assert changed_fields(before, after) == {field} | {name for name in others if getattr(settings.compile, name) > 1}
    assert compile_job_name(changed, shape) != compile_job_name(settings, shape)
    assert weights_job_name(changed) != weights_job_name(settings)


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


def test_serving_waits_for_the_published_key_not_for_the_job_and_pulumi_waits_for_neither(rendering, stack_config):
    settings, jobs = WorkloadSettings.of(stack_config), {job.urn for job in rendering.of_type(JOB)}
    for deployment in rendering.of_type(DEPLOYMENT):
        assert not jobs & set(deployment.dependencies), deployment.name
        assert manifest(deployment)["metadata"]["annotations"] == {"pulumi.com/skipAwait": "true"}
        assert not deployment.custom_timeouts, deployment.name
        if deployment.name.startswith(workload_name(SERVE, "")):
            shape = parse_shape(deployment.name.removeprefix(workload_name(SERVE, "")))
            assert manifest(deployment)["spec"]["progressDeadlineSeconds"] == \
                deployment_deadline_minutes(settings, shape) * 60


def test_the_weights_job_is_named_by_what_decides_the_weights_only(stack_config):
    """Shared by every shape: a new shape, a text length or a serving family of the same compile API leave the
    weights (and their Job) as they are; the model, revision, dtype, TP degree, a family of the other compile API
    (NxD Inference shards for trn2, ModelBuilder elsewhere) or the weights format make new ones."""
    settings, shape = WorkloadSettings.of(stack_config), stack_config.shapes[0]
    same = [dataclasses.replace(settings, model=settings.model.model_copy(update={
                "max_text_length": settings.model.max_text_length // 2}))]
    same += [dataclasses.replace(settings, serving=settings.serving.model_copy(update={"pool": family}))
             for family in NEURON_FAMILIES
             if family != settings.serving.pool and compile_api(family) == settings.compile_api]
    assert {weights_job_name(changed) for changed in same} == {weights_job_name(settings)}
    for field in ("model", "revision", "dtype", "tp_degree"):
        assert weights_job_name(KEY_SETTING_CHANGES[field](settings)) != weights_job_name(settings), field
    for family in NEURON_FAMILIES:
        if compile_api(family) != settings.compile_api:
            moved = dataclasses.replace(settings, serving=settings.serving.model_copy(update={"pool": family}))
            assert weights_job_name(moved) != weights_job_name(settings), family
    assert all(compile_job_name(changed, shape) != compile_job_name(settings, shape) for changed in same)


# One change of each setting model_args reads; a trn2 stack cannot change its text length (see above).
WEIGHTS_SETTING_CHANGES = {**KEY_SETTING_CHANGES,
                           "other compile API": lambda s: dataclasses.replace(s, serving=s.serving.model_copy(update={
                               "pool": next(family for family in NEURON_FAMILIES
                                            if compile_api(family) != compile_api(s.serving.pool))}))}


@pytest.mark.parametrize("change", WEIGHTS_SETTING_CHANGES)
def test_the_weights_job_is_renamed_exactly_when_the_runtime_s_weights_key_changes(stack_config,
                                                                                   neuron_distributions, change):
    """infra.pods.weights_key beside model.keys.weights_key for the weights Job's own options: a new runtime key
    always gets a new Job (or its serving pods would wait for weights nothing publishes), and a change the runtime
    key ignores reruns no Job."""
    settings = WorkloadSettings.of(stack_config)
    changed = WEIGHTS_SETTING_CHANGES[change](settings)
    if change == "max_text_length" and settings.compile_api == NXDI:
        pytest.skip("not a setting on trn2: test_each_key_setting_changes_the_runtime_key_and_the_job_name shows the "
                    "compile refusing another length")
    if compile_api(changed.serving.pool) == NXDI and changed.model.max_text_length != 512:
        changed = dataclasses.replace(changed, model=changed.model.model_copy(update={"max_text_length": 512}))
    runtime_changed = runtime_weights_key(changed) != runtime_weights_key(settings)
    assert (weights_job_name(changed) != weights_job_name(settings)) == runtime_changed
    # The weights depend on neither the text length nor the target, only on the compile API the target implies.
    same_api = compile_api(changed.serving.pool) == settings.compile_api
    assert runtime_changed == (change != "max_text_length" and not (change == "target" and same_api))


def test_a_new_weights_format_names_a_new_weights_job_and_keeps_the_graphs_jobs(stack_config, monkeypatch):
    settings, shape = WorkloadSettings.of(stack_config), stack_config.shapes[0]
    weights, graphs = weights_job_name(settings), compile_job_name(settings, shape)
    monkeypatch.setattr(pods, "WEIGHTS_FORMAT_VERSION", pods.WEIGHTS_FORMAT_VERSION + 1)
    assert weights_job_name(settings) != weights and compile_job_name(settings, shape) == graphs


ADAPTER = LoraSource(id="someone/flux-style-lora", revision="c" * 40, scale=0.8)


def with_adapters(settings, *adapters):
    return dataclasses.replace(settings, model=settings.model.model_copy(update={"loras": adapters}))


def test_an_adapter_change_publishes_new_weights_reuses_every_shape_s_graphs_and_rolls_the_servers(
        stack_config, neuron_distributions):
    """Issue 20, item 3: the adapters go to the weights Job and to what the serving pods load and wait for, never
    to a graphs Job; the runtime's weights key of the Job's options is the one the servers resolve."""
    settings = WorkloadSettings.of(stack_config)
    if stack_config.serving.pool not in MERGING_FAMILIES:
        pytest.skip("adapters are not merged on trn2 (refused by the config)")
    for adapted in (with_adapters(settings, ADAPTER),
                    with_adapters(settings, ADAPTER.model_copy(update={"scale": 0.4})),
                    with_adapters(settings, ADAPTER, ADAPTER.model_copy(update={"file": "b.safetensors"}))):
        assert weights_job_name(adapted) != weights_job_name(settings)
        weights_command = weights_job_spec(adapted, "image", "claim")["template"]["spec"]["containers"][0]["command"]
        weights = runtime_options(weights_command[weights_command.index("model.compile") + 1:])
        assert weights.loras == adapted.model.adapters and weights_key(weights) != weights_key(
            dataclasses.replace(weights, loras=()))
        for shape in stack_config.shapes:
            assert compile_job_name(adapted, shape) == compile_job_name(settings, shape)
            served = runtime_options(resolve_args(adapted, shape))
            assert graphs_key(served) == graphs_key(runtime_options(resolve_args(settings, shape)))
            assert weights_key(served) == weights_key(weights)


def test_a_stack_with_an_adapter_renders_it_where_the_weights_are_made_loaded_and_awaited():
    raw_model = json.loads(stack_file_config("dev")[0]["flux-neuron:model"])
    rendering = run_program("dev", {"flux-neuron:model": {**raw_model, "loras": [
        ADAPTER.model_dump(by_alias=True, exclude={"gated"}, exclude_none=True)]}})
    lora = ["--lora", adapter_argument(ADAPTER.adapter)]
    jobs = declared(rendering, JOB)
    assert len(jobs) == len(rendering.outputs["endpoints"]) + 1
    for name, job in jobs.items():
        command = job["spec"]["template"]["spec"]["containers"][0]["command"]
        assert (lora == command[-2:]) == ("--weights" in command), name
        compile_cli.parse(compile_cli.after_module(command))
    for name, deployment in declared(rendering, DEPLOYMENT).items():
        if name.startswith(workload_name(SERVE, "")):
            pod = deployment["spec"]["template"]
            command = " ".join(pod["spec"]["containers"][0]["command"])
            assert " ".join(lora) in command, name
            awaited = json.loads(pod["metadata"]["annotations"][activation.RESOLVE_ARGS_ANNOTATION])
            assert awaited[awaited.index("--lora"):][:2] == lora, name
