"""The pod builders (infra.pods) on their own: pure functions of WorkloadSettings, the very specs
the program declares."""

from __future__ import annotations

import dataclasses

from infra.naming import (
    ACTIVATOR, GRAPHS_PV_READ_ONLY, GRAPHS_PV_READ_WRITE, NEURON_SCHEDULER_NAME, SERVE, WORKLOAD_NAMESPACE,
    workload_name,
)
from planning.offline import manifest
from infra.pods import (
    COMPILE_START_MINUTES, WorkloadSettings, activator_deployment_spec, artifact_key_args, autoscaler_spec,
    compile_job_name, compile_job_spec, publish_limit_seconds, serving_deployment_spec, weights_job_name,
    weights_job_spec,
)


def test_the_program_declares_exactly_what_the_builders_build(rendering, stack_config):
    settings = WorkloadSettings.of(stack_config)
    image = rendering.outputs["image"]
    for shape in stack_config.shapes:
        job = manifest(rendering.one("kubernetes:batch/v1:Job", compile_job_name(settings, shape)))
        assert job["spec"] == compile_job_spec(settings, shape, image, GRAPHS_PV_READ_WRITE, NEURON_SCHEDULER_NAME)
        serve_name = workload_name(SERVE, shape)
        deployment = manifest(rendering.one("kubernetes:apps/v1:Deployment", serve_name))
        assert deployment["spec"] == serving_deployment_spec(settings, shape, image, GRAPHS_PV_READ_ONLY,
                                                             NEURON_SCHEDULER_NAME)
        autoscaler = manifest(rendering.one("kubernetes:autoscaling/v2:HorizontalPodAutoscaler", serve_name))
        assert autoscaler["spec"] == autoscaler_spec(settings, shape, serve_name)
    weights = manifest(rendering.one("kubernetes:batch/v1:Job", weights_job_name(settings)))
    assert weights["spec"] == weights_job_spec(settings, image, GRAPHS_PV_READ_WRITE)
    activator = manifest(rendering.one("kubernetes:apps/v1:Deployment", ACTIVATOR))
    assert activator["spec"] == activator_deployment_spec(image, GRAPHS_PV_READ_WRITE, WORKLOAD_NAMESPACE)


def test_the_specs_follow_the_settings_they_are_given(stack_config):
    settings = WorkloadSettings.of(stack_config)
    shape = stack_config.shapes[0]
    changed = dataclasses.replace(
        settings,
        compile=settings.compile.model_copy(update={"timeout_minutes": settings.compile.timeout_minutes + 60}),
        serving=settings.serving.model_copy(update={"replicas": 2, "max_replicas": 5}),
        model=settings.model.model_copy(update={"revision": "0" * 40}))
    job = compile_job_spec(changed, shape, "image", "rw", "scheduler")
    assert job["activeDeadlineSeconds"] == (settings.compile.timeout_minutes + 60) * 60
    assert publish_limit_seconds(changed) == (settings.compile.timeout_minutes + 60 + COMPILE_START_MINUTES) * 60
    autoscaler = autoscaler_spec(changed, shape, "flux-serve")
    assert (autoscaler["minReplicas"], autoscaler["maxReplicas"]) == (2, 5)
    key = artifact_key_args(changed, shape)
    assert key[key.index("--revision") + 1] == "0" * 40
    command = serving_deployment_spec(changed, shape, "image", "ro", "scheduler")[
        "template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--revision") + 1] == "0" * 40
