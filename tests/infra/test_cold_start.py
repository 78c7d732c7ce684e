"""The cold-start budget: its arithmetic, and the constants the serving pods are sized from."""

from __future__ import annotations

import math

import pytest

from infra import catalog, cold_start
from infra.cold_start import (
    ACTIVATION_S,
    ARTIFACT_GB,
    BUDGET_POOLS,
    BUDGET_SHAPES,
    FLUX_DEV_GRAPH_GB,
    IMAGE_ON_NEW_NODE_S,
    IMAGE_PULL_S,
    NODE_LAUNCH_S,
    ON_NEW_NODE_GOAL_S,
    ON_RUNNING_NODE_GOAL_S,
    PULLED,
    SNAPSHOT,
    SNAPSHOT_FAST_RESTORE_S,
    SNAPSHOT_FSR,
    SNAPSHOT_LAZY_RESTORE_S,
    STARTUP_PROBE_MARGIN,
    VERIFIED_COPY_GBPS,
    WALKTHROUGH_P50_MS,
    artifact_read_seconds,
    budget,
    budget_table,
    scale_up_period_seconds,
    startup_probe_seconds,
    warm_up_seconds,
)
from planning.offline import REPO_ROOT, manifest
from model.components import COMPONENTS
from common import activation
from common.shapes import parse_shape

TRN1 = ("trn1.32xlarge",)
INF2 = ("inf2.24xlarge", "inf2.48xlarge")

def test_the_artifact_is_flux_dev_sized():
    assert set(FLUX_DEV_GRAPH_GB) == set(COMPONENTS)
    assert 33 < ARTIFACT_GB < 35  # NOTES.md: FLUX.1-dev in bf16 is ~34 GB


def test_the_artifact_is_read_at_the_slower_of_mountpoints_target_and_the_verified_copy():
    """The serving volume passes the smallest network figure of the pool's types to Mountpoint (infra/storage.py):
    not the 10 Gbps Mountpoint falls back to without IMDS."""
    # inf2.24xlarge's 50 Gbps is below what the verified copy keeps up with: the network bounds the read.
    assert catalog.mountpoint_gbps(INF2) == 50
    assert artifact_read_seconds(INF2) == pytest.approx(ARTIFACT_GB * 8 / 50)
    # trn1.32xlarge's 800 Gbps is above it: the copy's CPU does.
    assert 50 < VERIFIED_COPY_GBPS < catalog.mountpoint_gbps(TRN1)
    assert artifact_read_seconds(TRN1) == pytest.approx(ARTIFACT_GB * 8 / VERIFIED_COPY_GBPS)
    # A pool with a small type reads at that type's rate.
    assert artifact_read_seconds(("inf2.xlarge", "inf2.48xlarge")) == pytest.approx(ARTIFACT_GB * 8 / 15)


def test_a_pod_waits_for_the_activators_next_look_before_anything_else():
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


def test_a_new_node_adds_its_launch_and_the_image_as_the_node_gets_it():
    shape = parse_shape("1024x576")
    fast, lazy = budget(INF2, shape, fast_snapshot_restore=True), budget(INF2, shape, fast_snapshot_restore=False)
    assert fast.on_new_node == pytest.approx(fast.on_running_node + NODE_LAUNCH_S + SNAPSHOT_FAST_RESTORE_S)
    assert lazy.on_new_node == pytest.approx(fast.on_running_node + NODE_LAUNCH_S + SNAPSHOT_LAZY_RESTORE_S)
    assert fast.on_new_node_with(PULLED) == pytest.approx(fast.on_running_node + NODE_LAUNCH_S + IMAGE_PULL_S)
    assert fast.on_new_node_with(SNAPSHOT) == pytest.approx(lazy.on_new_node)
    assert fast.in_container == lazy.in_container < fast.on_running_node  # the activation comes first
    assert fast.on_running_node <= ON_RUNNING_NODE_GOAL_S


def test_the_snapshot_restored_fast_meets_the_new_node_goal_for_every_row_and_nothing_else_does():
    for pool in BUDGET_POOLS:
        for name in BUDGET_SHAPES:
            plan = budget(pool, parse_shape(name))
            assert plan.on_new_node_with(SNAPSHOT_FSR) <= ON_NEW_NODE_GOAL_S, (pool, name)
            assert plan.on_new_node_with(SNAPSHOT) > ON_NEW_NODE_GOAL_S, (pool, name)
            assert plan.on_new_node_with(PULLED) > ON_NEW_NODE_GOAL_S, (pool, name)
    assert IMAGE_ON_NEW_NODE_S[SNAPSHOT_FSR] < IMAGE_ON_NEW_NODE_S[SNAPSHOT] < IMAGE_ON_NEW_NODE_S[PULLED]


@pytest.mark.parametrize("fast_snapshot_restore", [True, False])
def test_the_probe_and_scale_up_derive_from_the_budget(fast_snapshot_restore):
    shape = parse_shape("1024x576")
    plan = budget(INF2, shape, fast_snapshot_restore)
    assert startup_probe_seconds(INF2, shape) == math.ceil(plan.in_container * STARTUP_PROBE_MARGIN)
    assert scale_up_period_seconds(INF2, shape, fast_snapshot_restore) == math.ceil(plan.on_new_node)


def test_a_lazily_restored_image_lengthens_the_scale_up_period_by_its_extra_seconds():
    shape = parse_shape("256x144")
    assert scale_up_period_seconds(TRN1, shape, False) - scale_up_period_seconds(TRN1, shape, True) == \
        pytest.approx(SNAPSHOT_LAZY_RESTORE_S - SNAPSHOT_FAST_RESTORE_S, abs=1)


def test_a_slower_read_widens_the_startup_window(monkeypatch):
    shape = parse_shape("256x144")
    assert startup_probe_seconds(("inf2.xlarge",), shape) > startup_probe_seconds(("inf2.48xlarge",), shape)
    before = startup_probe_seconds(TRN1, shape)
    monkeypatch.setattr(cold_start, "VERIFIED_COPY_GBPS", cold_start.VERIFIED_COPY_GBPS / 4)
    assert startup_probe_seconds(TRN1, shape) > before


def test_docs_show_the_budget_this_module_computes():
    assert budget_table() in (REPO_ROOT / "docs" / "cold-start.md").read_text()


def test_each_volume_targets_the_slowest_network_of_the_instances_it_is_mounted_on(rendering, stack_config):
    volumes = {manifest(v)["metadata"]["name"]: manifest(v)["spec"]["mountOptions"]
               for v in rendering.of_type("kubernetes:core/v1:PersistentVolume")}
    serving = catalog.mountpoint_gbps(stack_config.serving_pool.instance_types)
    assert f"maximum-throughput-gbps {serving}" in volumes["flux-graphs-ro"]
    assert any(option.startswith("maximum-throughput-gbps") for option in volumes["flux-graphs-rw"])
