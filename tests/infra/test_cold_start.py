"""The cold-start budget: its arithmetic, and the constants the serving pods are sized from."""

from __future__ import annotations

import math

import pytest

from infra import catalog
from infra.cold_start import (
    ACTIVATION_S,
    ARTIFACT_GB,
    FLUX_DEV_GRAPH_GB,
    IMAGE_PULL_S,
    NODE_LAUNCH_S,
    ON_RUNNING_NODE_GOAL_S,
    STARTUP_PROBE_MARGIN,
    WALKTHROUGH_P50_MS,
    budget,
    budget_table,
    scale_up_period_seconds,
    startup_probe_seconds,
    warm_up_seconds,
)
from planning.offline import REPO_ROOT
from model.components import COMPONENTS
from common import activation
from common.shapes import parse_shape

TRN1 = ("trn1.32xlarge",)
INF2 = ("inf2.24xlarge", "inf2.48xlarge")


@pytest.mark.parametrize("pool, gbps", [(TRN1, 800), (INF2, 50), (("inf2.xlarge", "inf2.48xlarge"), 15)])
def test_the_artifact_is_flux_dev_sized_and_read_at_the_throughput_its_volume_targets(pool, gbps):
    """The serving volume passes the smallest network figure of the pool's types to Mountpoint (infra/storage.py),
    and the read takes that rate: not the 10 Gbps Mountpoint falls back to without IMDS."""
    assert set(FLUX_DEV_GRAPH_GB) == set(COMPONENTS)
    assert 33 < ARTIFACT_GB < 35  # NOTES.md: FLUX.1-dev in bf16 is ~34 GB
    assert catalog.mountpoint_gbps(pool) == gbps
    plan = budget(pool, parse_shape("1024x576"))
    assert plan.steps["artifact read"] == pytest.approx(ARTIFACT_GB * 8 / gbps)


def test_a_pod_waits_for_the_activators_next_pass_before_anything_else():
    plan = budget(INF2, parse_shape("1024x576"))
    assert list(plan.steps)[0] == "activation" and plan.steps["activation"] == ACTIVATION_S == activation.INTERVAL_SECONDS


@pytest.mark.parametrize("family", ["trn1", "inf2"])
@pytest.mark.parametrize("shape", ["256x144", "1024x576"])
def test_the_warm_up_at_a_measured_shape_is_the_walkthroughs_p50(family, shape):
    assert warm_up_seconds(family, parse_shape(shape)) == WALKTHROUGH_P50_MS[family][shape] / 1000


def test_the_warm_up_grows_with_image_tokens_between_and_beyond_the_measured_shapes():
    times = [warm_up_seconds("inf2", parse_shape(shape)) for shape in ("128x128", "256x144", "512x512", "1024x576",
                                                                         "1024x1024")]
    assert times == sorted(times)
    assert times[0] == times[1]  # never below the smallest measured shape
    assert warm_up_seconds("trn2", parse_shape("512x512")) == warm_up_seconds("trn1", parse_shape("512x512"))


def test_a_new_node_adds_its_launch_and_the_image_pull_to_a_pod_on_a_running_node():
    plan = budget(INF2, parse_shape("1024x576"))
    assert plan.on_new_node == pytest.approx(plan.on_running_node + NODE_LAUNCH_S + IMAGE_PULL_S)
    assert plan.on_new_node_with(0) == pytest.approx(plan.on_running_node + NODE_LAUNCH_S)
    assert plan.in_container < plan.on_running_node  # the activation comes first
    assert plan.on_running_node <= ON_RUNNING_NODE_GOAL_S


def test_the_probe_and_scale_up_derive_from_the_budget():
    shape = parse_shape("1024x576")
    plan = budget(INF2, shape)
    assert startup_probe_seconds(INF2, shape) == math.ceil(plan.in_container * STARTUP_PROBE_MARGIN)
    assert scale_up_period_seconds(INF2, shape) == math.ceil(plan.on_new_node)


def test_a_slower_volume_widens_the_startup_window():
    shape = parse_shape("256x144")
    assert startup_probe_seconds(("inf2.xlarge",), shape) > startup_probe_seconds(("inf2.48xlarge",), shape)


def test_docs_show_the_budget_this_module_computes():
    assert budget_table() in (REPO_ROOT / "docs" / "cold-start.md").read_text()
