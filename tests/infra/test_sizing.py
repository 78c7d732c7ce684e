"""The sizing model (infra/sizing.py): component bytes, HBM fit, device counts, compile memory; that
no Neuron pod of a real stack asks for more NeuronCores than its TP degree needs; and the capacity
table built from the rendering (planning/capacity.py) with its arithmetic."""

from __future__ import annotations

import math

import pytest

from infra import catalog, sizing
from infra.naming import COMPILE, NEURON_DEVICE_RESOURCE, SERVE, neuron_nodepool, neuron_spot_nodepool
from infra.sizing import GB, GIB
from planning import REFRESH_COMMAND, capacity
from planning.offline import REPO_ROOT, manifest
from planning.render import write_plan

JOB = "kubernetes:batch/v1:Job"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
TRN1 = ("trn1.32xlarge",)
INF2 = ("inf2.24xlarge", "inf2.48xlarge")
PLANS = REPO_ROOT / "plans"


def test_the_components_are_the_ones_the_compile_traces():
    from model.components import COMPONENTS

    assert tuple(component.name for component in sizing.FLUX_DEV) == COMPONENTS


def test_float32_doubles_the_bytes_and_the_vae_decoder_is_always_float32():
    transformer = next(c for c in sizing.FLUX_DEV if c.name == "transformer")
    vae = next(c for c in sizing.FLUX_DEV if c.name == "vae_decoder")
    assert transformer.bytes("bfloat16") == 23.8 * GB and transformer.bytes("float32") == 2 * 23.8 * GB
    assert vae.bytes("bfloat16") == vae.bytes("float32") == 0.4 * GB


def test_tensor_parallel_degrees_divide_both_head_counts():
    # gcd(24, 64) = 8
    assert sizing.tensor_parallel_degrees() == (1, 2, 4, 8)


def test_core_0_holds_its_shards_the_whole_small_components_and_a_margin():
    # TP 4, bfloat16: (23.8 + 9.5) GB x 1.25 / 4 + 0.25 GB CLIP + 0.4 GB float32 VAE + 2 GiB
    expected = math.ceil(23.8 * GB * 1.25 / 4) + math.ceil(9.5 * GB * 1.25 / 4) + 0.25 * GB + 0.4 * GB + 2 * GIB
    assert sizing.hbm_bytes_per_core(4, "bfloat16") == expected
    assert round(expected / GIB, 1) == 12.3


@pytest.mark.parametrize("family, dtype, fitting", [
    ("trn1", "bfloat16", (4, 8)),   # TP 2 needs 22.0 GiB of a 16 GiB core
    ("inf2", "bfloat16", (4, 8)),
    ("trn1", "float32", (8,)),
    ("trn2", "bfloat16", (2, 4, 8)),  # 24 GiB per logical core at LNC 2
])
def test_the_degrees_that_fit_hbm(family, dtype, fitting):
    assert sizing.fitting_tensor_parallel(family, dtype) == fitting


@pytest.mark.parametrize("family, types, cores, devices", [
    ("trn1", TRN1, 8, 4),      # dev: TP 8 = 8 cores = 4 devices
    ("trn1", TRN1, 4, 4),      # 2 devices would do, but trn1.32xlarge places 1, 4, 8 or 16
    ("trn1", TRN1, 16, 8),
    ("inf2", INF2, 4, 2),      # prod: any contiguous count
    ("inf2", INF2, 8, 4),
    ("trn2", ("trn2.48xlarge",), 4, 1),
    ("trn1", ("trn1.2xlarge",), 8, None),
])
def test_the_smallest_device_count_the_scheduler_extension_places(family, types, cores, devices):
    assert sizing.devices_for(family, types, cores) == devices


def test_dev_compiles_eight_workers_at_once_within_a_trn1_32xlarge():
    compiling = sizing.compile_plan(TRN1, 4, 8, "bfloat16")
    # 8 workers x (23.8 GB bfloat16 transformer + 24 GiB compiler) = 369.3 GiB <= 512 - 16 GiB
    assert (compiling.instance_type, compiling.concurrency, compiling.peak.component.name) == ("trn1.32xlarge", 8, "transformer")
    assert compiling.memory_gib == math.ceil(8 * (23.8 * GB + 24 * GIB) / GIB) == 370


def test_concurrency_drops_until_the_workers_fit_the_host():
    # float32: one worker is 44.3 + 24 GiB; 7 fit in 496 GiB, 8 would not.
    compiling = sizing.compile_plan(TRN1, 4, 8, "float32")
    assert compiling.concurrency == 7 and compiling.memory_gib == math.ceil(7 * (47.6 * GB + 24 * GIB) / GIB) == 479
    assert 8 * (47.6 * GB + 24 * GIB) > (512 - 16) * GIB


def test_prod_compiles_on_the_roomiest_inf2_type_holding_its_devices():
    compiling = sizing.compile_plan(INF2, 2, 4, "bfloat16")
    assert (compiling.instance_type, compiling.concurrency, compiling.memory_gib) == ("inf2.48xlarge", 4, 185)


def test_a_host_without_memory_for_one_worker_has_no_plan():
    assert sizing.compile_plan(("trn1.2xlarge",), 1, 2, "bfloat16") is None
    assert sizing.compile_host_gib_needed(2, "bfloat16") == math.ceil((23.8 * GB + 24 * GIB + 16 * GIB) / GIB) == 63


# --- the real stacks, rendered --------------------------------------------------------------------

def _neuron_pods(rendering):
    for type_ in (JOB, DEPLOYMENT):
        for resource in rendering.of_type(type_):
            obj = manifest(resource)
            yield obj["kind"], obj["metadata"]["name"], obj["spec"]["template"]["spec"]


def test_no_neuron_pod_asks_for_more_cores_than_its_tensor_parallel_degree(rendering, stack_config):
    pools = {"Job": stack_config.compile_pool, "Deployment": stack_config.serving_pool}
    pods = list(_neuron_pods(rendering))
    assert len(pods) == 2 * len(stack_config.shapes)
    for kind, name, spec in pods:
        (container,) = spec["containers"]
        command = container["command"]
        tensor_parallel = int(command[command.index("--tp-degree") + 1])
        devices = int(container["resources"]["limits"][NEURON_DEVICE_RESOURCE])
        assert devices * catalog.cores_per_device(pools[kind].family) == tensor_parallel, name


def test_the_compile_job_memory_and_concurrency_come_from_the_sizing_model(rendering, stack_config):
    compiling = sizing.compile_plan(stack_config.compile_pool.instance_types, stack_config.compile.devices,
                               stack_config.compile.tensor_parallel, stack_config.dtype)
    for kind, name, spec in _neuron_pods(rendering):
        if kind != "Job":
            continue
        (container,) = spec["containers"]
        resources = container["resources"]
        # Guaranteed QoS: requests equal limits.
        assert resources["requests"]["memory"] == resources["limits"]["memory"] == f"{compiling.memory_gib}Gi", name
        command = container["command"]
        assert int(command[command.index("--max-parallel-compilations") + 1]) == compiling.concurrency, name
    expected = {"dev": (8, 370), "prod": (4, 185)}[rendering.stack]
    assert (compiling.concurrency, compiling.memory_gib) == expected


# --- the capacity table (planning/capacity.py, plans/<stack>/capacity.md) ---------------------------

def _request(devices, instance_types, cpu=22, memory_gib=89):
    return capacity.PodRequest(SERVE, "neuron-x", instance_types, 2 * devices, devices, cpu, memory_gib, None)


def test_four_dev_serving_pods_fit_one_trn1_32xlarge():
    fit = capacity.pods_per_node(_request(4, TRN1), "trn1.32xlarge")
    assert (fit.pods, fit.limited_by) == (4, "devices")
    mix = capacity.cheapest_mix(_request(4, TRN1), 6, "us-west-2")
    assert str(mix) == "2 x trn1.32xlarge" and mix.price("us-west-2") == 2 * 21.50 and mix.devices == 32


def test_prod_serving_pods_fill_both_inf2_types_without_an_idle_device():
    for name, pods in (("inf2.24xlarge", 3), ("inf2.48xlarge", 6)):
        fit = capacity.pods_per_node(_request(2, INF2), name)
        assert (fit.pods, fit.limited_by) == (pods, "devices")
        assert fit.pods * 2 == catalog.instance(name).devices


def test_memory_limits_a_compile_pod_to_what_the_node_can_hold():
    # 370 GiB: one per trn1.32xlarge (512 - 16 GiB), although its devices would take four.
    fit = capacity.pods_per_node(_request(4, TRN1, memory_gib=370), "trn1.32xlarge")
    assert (fit.pods, fit.limited_by) == (1, "memory")


def test_the_cheapest_mix_combines_instance_types():
    # 4 devices per pod: inf2.24xlarge holds 1, inf2.48xlarge 3; 4 pods cost least as one of each.
    mix = capacity.cheapest_mix(_request(4, INF2), 4, "us-east-1")
    assert str(mix) == "1 x inf2.24xlarge + 1 x inf2.48xlarge"
    assert mix.price("us-east-1") == pytest.approx(6.49063 + 12.98127)


def test_a_type_without_a_list_price_shows_as_not_listed_and_packs_by_node_count():
    trn2 = ("trn2.48xlarge",)
    mix = capacity.cheapest_mix(_request(1, trn2, cpu=10, memory_gib=100), 20, "us-west-2")
    assert str(mix) == "2 x trn2.48xlarge" and mix.price("us-west-2") is None


def test_the_committed_capacity_tables_are_current(rendering, tmp_path):
    write_plan(rendering, tmp_path)
    fresh = (tmp_path / rendering.stack / capacity.FILENAME).read_text()
    committed = PLANS / rendering.stack / capacity.FILENAME
    assert committed.exists() and committed.read_text() == fresh, \
        f"plans/{rendering.stack}/{capacity.FILENAME} is stale: run `{REFRESH_COMMAND}`"


def test_the_table_shows_each_pod_with_the_cores_its_tensor_parallel_degree_needs(rendering, stack_config):
    text = capacity.table(rendering)
    shapes = ", ".join(sorted(str(shape) for shape in stack_config.shapes))
    serving_pools = [neuron_nodepool(stack_config.serving.pool)]
    if stack_config.serving_pool.allows_spot:  # compile Jobs run on-demand only: not on the Spot pool
        serving_pools.append(neuron_spot_nodepool(stack_config.serving.pool))
    for role, settings, pools in ((COMPILE, stack_config.compile, [neuron_nodepool(stack_config.compile.pool)]),
                                  (SERVE, stack_config.serving, serving_pools)):
        tp = stack_config.compile.tensor_parallel
        row = (f"| {role} | {shapes} | {', '.join(pools)} | {tp} | {tp} | {settings.devices} | 0 |")
        assert row in text, row
    assert f"| {' + '.join(serving_pools)} | {stack_config.serving_pool.max_devices} |" in text
    assert "| no: " not in text, "a NodePool limit is below what its pods need at max"


def test_the_readme_shows_the_dev_table_as_generated():
    generated = (PLANS / "dev" / capacity.FILENAME).read_text()
    nodes = generated[generated.index("| what | nodes at min"):generated.index("\n\n## NodePool limits")]
    assert nodes in (REPO_ROOT / "README.md").read_text(), \
        f"README: copy the dev table from plans/dev/{capacity.FILENAME}"
