"""What a change deploys (issue 13, item 1): the real program for the dev stack under the Pulumi mocks,
as committed and with one change, compared resource by resource (URN and inputs). A changed URN is a
new resource and the old one deleted; changed inputs are an update or, for a Job's pod template, a
replacement. The mocks stand in for the Pulumi engine, so what the engine would do with those
differences (ignore_changes included) is Pulumi's documented behaviour, not something run here."""

from __future__ import annotations

import copy
import json
import re

import pytest

from infra import versions
from infra.image import REPO_ROOT, image_sources
from infra.naming import COMPILE, SERVE, workload_name
from planning.offline import run_program, stack_file_config

STACK = "dev"
JOB = "kubernetes:batch/v1:Job"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
SERVICE = "kubernetes:core/v1:Service"
PDB = "kubernetes:policy/v1:PodDisruptionBudget"
HPA = "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"
NODEPOOL = "kubernetes:karpenter.sh/v1:NodePool"
RELEASE = "kubernetes:helm.sh/v3:Release"
IMAGE_TYPES = ("docker-build:index:Image", "aws:ecr/repository:Repository")
RAW = stack_file_config(STACK)[0]
SHAPES = json.loads(RAW["flux-neuron:shapes"])
MODEL = json.loads(RAW["flux-neuron:model"])
PREBUILT_IMAGE = "123456789012.dkr.ecr.us-west-2.amazonaws.com/flux-prebuilt@sha256:" + "cd" * 32


@pytest.fixture(scope="module")
def baseline():
    return run_program(STACK)


def of_type(rendering, *types):
    """URN -> inputs of the resources of these types."""
    return {r.urn: r.inputs for r in rendering.resources if r.type in types}


def without(inputs, path):
    """`inputs` less the property at a Pulumi property path such as `spec.containers[0].image`."""
    remaining = copy.deepcopy(inputs)
    *parents, last = [int(index) if index else key for key, index in re.findall(r"(\w+)|\[(\d+)\]", path)]
    holder = remaining
    for step in parents:
        holder = holder[step]
    del holder[last]
    return remaining


def applied(resource):
    """A resource's inputs as Pulumi compares them: less what it is told to ignore."""
    inputs = resource.inputs
    for path in resource.ignore_changes:
        inputs = without(inputs, path)
    return inputs


@pytest.mark.parametrize("pin, chart", [("KARPENTER_VERSION", "karpenter"), ("PROMETHEUS_CHART_VERSION", "prometheus")])
def test_a_chart_pin_bump_changes_neither_the_image_nor_any_job(baseline, monkeypatch, pin, chart):
    # The image's build context, which its tag hashes, holds none of the deploy program's pins.
    assert REPO_ROOT / "infra" / "versions.py" not in image_sources()
    monkeypatch.setattr(versions, pin, getattr(versions, pin) + "-bumped")
    bumped = run_program(STACK)
    release = {r.inputs["name"]: r.inputs["version"] for r in bumped.of_type(RELEASE)}
    assert release[chart] == getattr(versions, pin)
    assert of_type(bumped, *IMAGE_TYPES) == of_type(baseline, *IMAGE_TYPES)
    assert bumped.outputs["image"] == baseline.outputs["image"]
    assert of_type(bumped, JOB) == of_type(baseline, JOB)
    assert of_type(bumped, DEPLOYMENT) == of_type(baseline, DEPLOYMENT)


def test_a_new_model_revision_replaces_every_job_and_updates_only_the_serving_deployments(baseline):
    revision = next(candidate for candidate in ("0" * 40, "1" * 40) if candidate != MODEL["revision"])
    revised = run_program(STACK, {"flux-neuron:model": {**MODEL, "revision": revision}})
    before, after = of_type(baseline, JOB), of_type(revised, JOB)
    # Every shape's graphs Job and the weights Job.
    assert len(after) == len(before) == len(SHAPES) + 1 and not set(after) & set(before)
    deployments_before, deployments_after = of_type(baseline, DEPLOYMENT), of_type(revised, DEPLOYMENT)
    assert set(deployments_after) == set(deployments_before)
    changed = {urn.rsplit("::", 1)[1] for urn in deployments_before if deployments_after[urn] != deployments_before[urn]}
    assert changed == {workload_name(SERVE, shape) for shape in SHAPES}
    for type_ in (SERVICE, PDB, HPA, NODEPOOL, *IMAGE_TYPES):
        assert of_type(revised, type_) == of_type(baseline, type_), type_


def test_adding_a_shape_adds_exactly_one_job_and_leaves_the_others_alone(baseline):
    extra = "768x1344"
    assert extra not in SHAPES
    added = run_program(STACK, {"flux-neuron:shapes": [*SHAPES, extra]})
    before, after = of_type(baseline, JOB), of_type(added, JOB)
    (new,) = set(after) - set(before)
    assert new.rsplit("::", 1)[1].startswith(workload_name(COMPILE, extra) + "-")
    assert {urn: after[urn] for urn in before} == before


def test_a_new_image_changes_the_deployments_and_nothing_of_a_job_that_is_applied(baseline):
    """A change to a serving-only file gives a new image digest: the mocks' digest is fixed, so a
    prebuilt image (`image.uri`) stands in for it."""
    rebuilt = run_program(STACK, {"flux-neuron:image": {"uri": PREBUILT_IMAGE}})
    assert rebuilt.outputs["image"] == PREBUILT_IMAGE != baseline.outputs["image"]
    jobs_before = {r.urn: r for r in baseline.of_type(JOB)}
    jobs_after = {r.urn: r for r in rebuilt.of_type(JOB)}
    assert set(jobs_after) == set(jobs_before)
    for urn, job in jobs_after.items():
        assert job.inputs != jobs_before[urn].inputs  # the new image is in the declared spec
        assert applied(job) == applied(jobs_before[urn])
    deployments_before, deployments_after = of_type(baseline, DEPLOYMENT), of_type(rebuilt, DEPLOYMENT)
    assert set(deployments_after) == set(deployments_before)
    assert all(PREBUILT_IMAGE in json.dumps(deployments_after[urn]) for urn in deployments_before)
    assert all(deployments_after[urn] != deployments_before[urn] for urn in deployments_before)
