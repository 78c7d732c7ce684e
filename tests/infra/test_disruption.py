"""Disruption-safe serving (issue 13, item 2): the NodePools of a family that allows Spot (an on-demand base
and a Spot pool for burst), where each pod may land, the zone spread, graceful node replacement and a
serving pod's grace within the Spot notice. The real stacks, and dev with Spot allowed, under the mocks."""

from __future__ import annotations

import math

import pytest

from infra import disruption, sizing
from infra.config import load_stack_config
from infra.karpenter import cpu_nodepool_spec, drain_seconds
from infra.naming import (
    ACTIVATOR, CAPACITY_TYPE_LABEL, CPU_NODEPOOL, NEURON_FAMILY_LABEL, ON_DEMAND, SERVE, SPOT, neuron_nodepool,
    neuron_spot_nodepool, workload_labels, workload_name,
)
from infra.pods import HOSTNAME_KEY, ZONE_KEY, rollout_minutes, serving_spread, zone_min_domains
from planning import checks
from planning.checks.references import pool_accepts
from planning.offline import manifest, run_program, stack_file_config, with_overrides

NODEPOOL = "kubernetes:karpenter.sh/v1:NodePool"
JOB = "kubernetes:batch/v1:Job"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
# dev with its trn1 pool allowing Spot, and a request timeout that fits the Spot notice.
DEV_WITH_SPOT = {
    "flux-neuron:neuronPools": {"trn1": {"instanceTypes": ["trn1.32xlarge"], "capacityTypes": [ON_DEMAND, SPOT],
                                         "maxDevices": 80}},
    "flux-neuron:serving": {"pool": "trn1", "replicas": 1, "maxReplicas": 2,
                            "requestTimeoutSeconds": disruption.MAX_SPOT_REQUEST_TIMEOUT_SECONDS},
}


# dev compiling on its serving family, with the devices of the compile Jobs.
DEV_COMPILING_ON_TRN1 = {**DEV_WITH_SPOT, "flux-neuron:compile": {"pool": "trn1", "tensorParallel": 8}}


def _rendered(overrides):
    return run_program("dev", overrides), load_stack_config(with_overrides(stack_file_config("dev")[0], overrides))


@pytest.fixture(scope="module")
def dev_with_spot():
    return _rendered(DEV_WITH_SPOT)


@pytest.fixture(scope="module")
def dev_compiling_on_trn1():
    return _rendered(DEV_COMPILING_ON_TRN1)


def nodepools(rendering) -> dict[str, dict]:
    return {manifest(pool)["metadata"]["name"]: manifest(pool)["spec"] for pool in rendering.of_type(NODEPOOL)}


def capacity_types(spec: dict) -> list[str]:
    return next(r["values"] for r in spec["template"]["spec"]["requirements"] if r["key"] == CAPACITY_TYPE_LABEL)


def accepting_pools(rendering, pod: dict) -> list[str]:
    """The NodePools whose nodes carry every label the pod's nodeSelector asks for."""
    return sorted(manifest(pool)["metadata"]["name"] for pool in rendering.of_type(NODEPOOL)
                  if all(pool_accepts(manifest(pool), key, {value}) for key, value in pod["nodeSelector"].items()))


def pod_specs(rendering, kind: str) -> list[dict]:
    """The pod specs of the Jobs, or of the serving Deployments."""
    return [manifest(resource)["spec"]["template"]["spec"] for resource in rendering.of_type(kind)
            if resource.name != ACTIVATOR]


def both(rendering, stack_config, dev_with_spot, dev_compiling_on_trn1):
    """The stack as committed (compiling device-less), dev with Spot, dev compiling on trn1 (with Spot)."""
    return [(rendering, stack_config), dev_with_spot, dev_compiling_on_trn1]


def test_a_family_with_spot_gets_an_on_demand_base_pool_first_and_a_spot_pool_with_the_rest(
        rendering, stack_config, dev_with_spot, dev_compiling_on_trn1):
    for rendered, config in both(rendering, stack_config, dev_with_spot, dev_compiling_on_trn1):
        pools = nodepools(rendered)
        for family, pool in config.neuron_pools.items():
            base = pools[neuron_nodepool(family)]
            if not pool.allows_spot:
                assert neuron_spot_nodepool(family) not in pools
                assert capacity_types(base) == list(pool.capacity_types) and "weight" not in base
                assert base["limits"] == {"aws.amazon.com/neuron": pool.max_devices}
                continue
            spot = pools[neuron_spot_nodepool(family)]
            assert ON_DEMAND in capacity_types(base) and SPOT not in capacity_types(base)
            assert capacity_types(spot) == [SPOT]
            assert base["weight"] > spot["weight"], "Karpenter must try the on-demand base first"
            # The base holds every shape at serving.replicas plus the surge and every graphs Job compiling on the
            # family, in whole nodes.
            shapes = len(config.shapes)
            needed = (shapes * (config.serving.replicas + sizing.ROLLOUT_SURGE) * config.serving.devices
                      + (shapes * config.compile.devices if config.compile.pool == family else 0))
            node = pool.largest_node_devices
            base_limit, spot_limit = base["limits"]["aws.amazon.com/neuron"], spot["limits"]["aws.amazon.com/neuron"]
            assert base_limit == math.ceil(needed / node) * node
            assert base_limit + spot_limit == pool.max_devices
            assert spot_limit >= shapes * (config.serving.max_replicas - config.serving.replicas) * config.serving.devices


def test_compile_jobs_land_on_on_demand_nodes_only_and_serving_on_every_pool_of_its_family(
        rendering, stack_config, dev_with_spot, dev_compiling_on_trn1):
    for rendered, config in both(rendering, stack_config, dev_with_spot, dev_compiling_on_trn1):
        family_pools = sorted(name for name, spec in nodepools(rendered).items()
                              if spec["template"].get("metadata", {}).get("labels", {}).get(NEURON_FAMILY_LABEL)
                              == config.serving.pool)
        for pod in pod_specs(rendered, JOB):
            assert pod["nodeSelector"][CAPACITY_TYPE_LABEL] == ON_DEMAND
            accepted = accepting_pools(rendered, pod)
            # The weights Job, and graphs Jobs with compile.pool cpu, on the cpu NodePool; the others on the family's
            # on-demand base, never its Spot pool.
            on_cpu = NEURON_FAMILY_LABEL not in pod["nodeSelector"]
            assert accepted == [CPU_NODEPOOL if on_cpu else neuron_nodepool(config.compile.pool)]
            assert on_cpu or all(capacity_types(nodepools(rendered)[name]) == [ON_DEMAND] for name in accepted)
        for pod in pod_specs(rendered, DEPLOYMENT):
            assert pod["nodeSelector"] == {NEURON_FAMILY_LABEL: config.serving.pool}
            assert accepting_pools(rendered, pod) == family_pools


@pytest.mark.parametrize("replicas, zones, zone_rule, min_domains", [
    (1, 3, "ScheduleAnyway", None),
    # With three zones the first replicas span two: none all on the first node that is Ready.
    (2, 3, "DoNotSchedule", 2), (3, 3, "DoNotSchedule", 2), (10, 3, "DoNotSchedule", 2),
    # Two zones, one of which may be lost: minDomains 1 would be no rule (the accepted risk).
    (3, 2, "DoNotSchedule", None),
])
def test_zones_are_a_hard_spread_rule_above_one_replica_over_all_zones_but_one_and_nodes_a_preference(
        replicas, zones, zone_rule, min_domains):
    labels = workload_labels(SERVE, "1024x576")
    rules = {rule["topologyKey"]: rule for rule in serving_spread(replicas, zones, labels)}
    assert rules[ZONE_KEY]["whenUnsatisfiable"] == zone_rule
    assert rules[ZONE_KEY].get("minDomains") == min_domains == zone_min_domains(replicas, zones) if replicas > 1 \
        else "minDomains" not in rules[ZONE_KEY]
    assert rules[HOSTNAME_KEY]["whenUnsatisfiable"] == "ScheduleAnyway" and "minDomains" not in rules[HOSTNAME_KEY]
    assert all(rule["maxSkew"] == 1 and rule["labelSelector"] == {"matchLabels": labels} for rule in rules.values())


def _spread_allows(pods_per_zone: dict[str, int], eligible: int, zone: str, min_domains: int | None) -> bool:
    """Kubernetes' rule for maxSkew 1: the zone's count after placing may exceed the global minimum by at most 1,
    and the minimum counts as 0 while fewer zones than minDomains are eligible (have nodes)."""
    minimum = 0 if min_domains and eligible < min_domains else min(pods_per_zone.values())
    return pods_per_zone[zone] + 1 - minimum <= 1


@pytest.mark.parametrize("stack", ["prod"], indirect=True)
def test_the_first_replicas_cannot_all_start_in_the_zone_whose_node_came_up_first(rendering, stack_config):
    """prod: three replicas, and the first node Ready is in one zone. Without minDomains the scheduler, which
    counts only zones with nodes, puts all three there; with it, one, and the others wait for nodes elsewhere.
    (dev runs one replica per shape: it has no zone rule to hold.)"""
    assert stack_config.serving.replicas >= 2 and stack_config.zone_count >= 3
    deployment = manifest(rendering.one(DEPLOYMENT, workload_name(SERVE, stack_config.shapes[0])))
    zone_rule = {rule["topologyKey"]: rule for rule in deployment["spec"]["template"]["spec"][
        "topologySpreadConstraints"]}[ZONE_KEY]
    for min_domains, placed in ((None, stack_config.serving.replicas), (zone_rule.get("minDomains"), 1)):
        pods = {"a": 0}
        while _spread_allows(pods, 1, "a", min_domains) and pods["a"] < stack_config.serving.replicas:
            pods["a"] += 1
        assert pods["a"] == placed


def test_the_rendered_spread_follows_serving_replicas_and_zones(rendering, stack_config):
    for shape in stack_config.shapes:
        deployment = manifest(rendering.one(DEPLOYMENT, workload_name(SERVE, shape)))
        spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert spread == serving_spread(stack_config.serving.replicas, stack_config.zone_count,
                                        workload_labels(SERVE, shape))
    zone = {rule["topologyKey"]: rule for rule in spread}[ZONE_KEY]["whenUnsatisfiable"]
    assert zone == ("DoNotSchedule" if stack_config.serving.replicas > 1 else "ScheduleAnyway")


def test_no_node_expires_and_drift_or_consolidation_takes_one_neuron_node_at_a_time(rendering, stack_config):
    pools = nodepools(rendering)
    assert all(spec["template"]["spec"]["expireAfter"] == "Never" for spec in pools.values())
    for name, spec in pools.items():
        if name == CPU_NODEPOOL:
            continue
        budgets = spec["disruption"]["budgets"]
        # A budget without reasons would also cap the others: every budget names its reasons.
        assert all(budget.get("reasons") for budget in budgets), name
        for reason, nodes in (("Drifted", "1"), ("Underutilized", "1"), ("Empty", "100%")):
            assert [budget["nodes"] for budget in budgets if reason in budget["reasons"]] == [nodes], (name, reason)
        assert spec["disruption"]["consolidationPolicy"] == "WhenEmpty"
    assert pools[CPU_NODEPOOL] == cpu_nodepool_spec(stack_config)


def _seconds(duration: str) -> int:
    assert duration.endswith("m"), duration
    return int(duration[:-1]) * 60


def test_a_drain_outlasts_the_compile_deadline_and_a_serving_replacement(rendering, stack_config, dev_with_spot,
                                                                       dev_compiling_on_trn1):
    for rendered, config in both(rendering, stack_config, dev_with_spot, dev_compiling_on_trn1):
        pools = nodepools(rendered)
        grace = disruption.serving_grace_seconds(config.serving.request_timeout_seconds)
        serving_drain = max(rollout_minutes(config.serving_pool, shape) for shape in config.shapes) * 60 + grace
        for job in rendered.of_type(JOB):
            deadline = manifest(job)["spec"]["activeDeadlineSeconds"]
            for name in accepting_pools(rendered, manifest(job)["spec"]["template"]["spec"]):
                bound = _seconds(pools[name]["template"]["spec"]["terminationGracePeriod"])
                # The compile started before the drain, so its deadline passes first; then its pod's grace.
                assert bound >= deadline + disruption.DEFAULT_POD_GRACE_SECONDS, name
        for name in accepting_pools(rendered, pod_specs(rendered, DEPLOYMENT)[0]):
            assert _seconds(pools[name]["template"]["spec"]["terminationGracePeriod"]) >= serving_drain, name
        if config.serving_pool.allows_spot:
            spot = pools[neuron_spot_nodepool(config.serving.pool)]["template"]["spec"]["terminationGracePeriod"]
            # The Spot pool holds no compile Job: its drain is bounded by serving alone.
            assert _seconds(spot) == math.ceil(drain_seconds(config, config.serving.pool, False) / 60) * 60
            assert _seconds(spot) < config.compile.timeout_minutes * 60


def test_a_serving_pod_deregisters_and_drains_its_requests_within_its_grace(rendering, stack_config, dev_with_spot,
                                                                           dev_compiling_on_trn1):
    for rendered, config in both(rendering, stack_config, dev_with_spot, dev_compiling_on_trn1):
        for pod in pod_specs(rendered, DEPLOYMENT):
            (server,) = pod["containers"]
            timeout = int(server["command"][server["command"].index("--request-timeout") + 1])
            assert timeout == config.serving.request_timeout_seconds
            pre_stop = server["lifecycle"]["preStop"]["sleep"]["seconds"]
            assert pre_stop == disruption.DEREGISTRATION_SECONDS
            # After the preStop sleep, SIGTERM: uvicorn waits for each admitted request, bounded by the timeout.
            assert pod["terminationGracePeriodSeconds"] >= pre_stop + timeout + disruption.EXIT_SECONDS
            if config.serving_pool.allows_spot:
                assert pod["terminationGracePeriodSeconds"] + disruption.INTERRUPTION_REACTION_SECONDS \
                    <= disruption.SPOT_NOTICE_SECONDS


def test_the_spot_limit_on_the_request_timeout_is_what_the_grace_leaves():
    assert disruption.serving_grace_seconds(disruption.MAX_SPOT_REQUEST_TIMEOUT_SECONDS) \
        == disruption.SPOT_NOTICE_SECONDS - disruption.INTERRUPTION_REACTION_SECONDS
    assert disruption.MAX_SPOT_REQUEST_TIMEOUT_SECONDS > 0


def test_dev_with_spot_passes_the_crd_schemas_and_rules(dev_with_spot):
    rendered, _ = dev_with_spot
    assert checks.check(rendered) == []
    assert sorted(rendered.outputs["nodePools"]) == sorted([neuron_nodepool("trn1"), neuron_spot_nodepool("trn1"),
                                                           CPU_NODEPOOL])

