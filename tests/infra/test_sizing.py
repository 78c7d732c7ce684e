"""The sizing model (infra/sizing.py): component bytes, HBM fit, device counts, compile memory, CPU and
scratch, node disk per family; that no Neuron pod of a real stack asks for more NeuronCores than its TP degree
needs; and the capacity table built from the rendering (planning/capacity.py) with its arithmetic."""

from __future__ import annotations

import math

import pytest

from common.neuron import flux_world_size
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


def test_a_compile_holds_one_build_of_its_largest_component_one_rank_of_it_and_the_compiler():
    """SPMD: one process per component, one after another; the transformer's is the peak (an estimate)."""
    # bfloat16 TP 8: 23.8 GB transformer + 23.8 GB x 1.25 / 8 traced rank + 24 GiB neuronx-cc = 49.6 GiB.
    assert sizing.compile_memory_bytes("bfloat16", 8) == 23.8 * GB + math.ceil(23.8 * GB * 1.25 / 8) + 24 * GIB
    assert round(sizing.compile_memory_bytes("bfloat16", 8) / GIB, 1) == 49.6
    # A smaller degree traces a larger rank; float32 doubles both.
    assert sizing.compile_memory_bytes("bfloat16", 4) > sizing.compile_memory_bytes("bfloat16", 8)
    assert sizing.compile_memory_bytes("float32", 8) == 2 * 23.8 * GB + math.ceil(2 * 23.8 * GB * 1.25 / 8) + 24 * GIB


def test_the_weights_job_holds_one_component_and_one_rank_and_writes_the_download_and_the_shards():
    assert sizing.weights_memory_bytes("bfloat16", 8) == 23.8 * GB + math.ceil(23.8 * GB * 1.25 / 8) + 8 * GIB
    assert sizing.download_bytes() == pytest.approx(33.75 * GB)
    # Every rank's shares of the sharded components (1.25 of each), CLIP whole, the float32 VAE whole.
    assert sizing.weights_bytes("bfloat16", 8) == pytest.approx((23.8 + 9.5) * 1.25 * GB + 0.25 * GB + 0.4 * GB,
                                                                rel=1e-9)
    assert sizing.weights_scratch_gib("bfloat16", 8) == math.ceil(
        (sizing.download_bytes() + sizing.weights_bytes("bfloat16", 8)) * sizing.SCRATCH_MARGIN / GIB) == 85


@pytest.mark.parametrize("memory_gib, instance_type, cpu", [
    (50, "m7i.4xlarge", 13),   # dev's graphs Job: 50 of 64 GiB, so 16 x 50/64 = 12.5 -> 13 vCPUs
    (34, "m7i.4xlarge", 9),    # dev's weights Job: 34 GiB does not fit m7i.2xlarge's 32 less 6
    (76, "m7i.8xlarge", 19),   # float32
    (760, "m7i.48xlarge", 190),  # the CPU share is capped at what the node leaves (192 - 1)
])
def test_a_device_less_pod_takes_the_smallest_cpu_type_that_holds_it_and_the_cpu_share_of_its_memory(
        memory_gib, instance_type, cpu):
    size = sizing.cpu_pod_size(memory_gib * GIB)
    assert (size.instance_type, size.memory_gib, size.cpu) == (instance_type, memory_gib, min(cpu, 191))


def test_a_compile_on_a_neuron_pool_takes_the_leanest_type_with_its_devices_and_memory():
    memory = sizing.compile_memory_bytes("bfloat16", 4)  # 53.1 GiB
    # inf2.24xlarge holds 2 devices and 54 GiB; its devices' CPU share (22) beats the memory share (96 x 54/384).
    assert sizing.neuron_compile_size(INF2, 2, memory, 22) == sizing.PodSize(22, 54, "inf2.24xlarge")
    # The memory share wins on a lean type: inf2.8xlarge's 128 GiB for 54 GiB is 14 of its 32 vCPUs.
    assert sizing.neuron_compile_size(("inf2.8xlarge",), 1, memory, 5) == sizing.PodSize(14, 54, "inf2.8xlarge")
    # trn1.2xlarge's 32 GiB hold no compile.
    assert sizing.neuron_compile_size(("trn1.2xlarge",), 1, memory, 5) is None


@pytest.mark.parametrize("instance_type, gib", [
    ("inf2.xlarge", 231), ("inf2.48xlarge", 231),          # no instance store: the 300 GiB root volume
    ("trn1.2xlarge", 358), ("trn1.32xlarge", 6331),        # the instance store, striped (RAID0)
])
def test_a_nodes_ephemeral_storage_is_its_instance_store_or_its_root_volume_less_the_image_and_the_reserve(
        instance_type, gib):
    assert sizing.node_ephemeral_gib(instance_type) == gib


# --- the real stacks, rendered --------------------------------------------------------------------

def _neuron_pods(rendering):
    for type_ in (JOB, DEPLOYMENT):
        for resource in rendering.of_type(type_):
            obj = manifest(resource)
            yield obj["kind"], obj["metadata"]["name"], obj["spec"]["template"]["spec"]


def _ranks(command):
    """The ranks a model.compile or serving command line runs: its TP degree, times its trn2 split."""
    def option(flag):
        return int(command[command.index(flag) + 1]) if flag in command else 1
    return flux_world_size(option("--tp-degree"), option("--context-parallel"), option("--cfg-parallel"))


def test_no_neuron_pod_asks_for_more_cores_than_its_ranks(rendering, stack_config):
    """One rank per (logical) NeuronCore: the TP degree, or on trn2 NxD Inference's world."""
    pods = [(kind, name, spec) for kind, name, spec in _neuron_pods(rendering)
            if NEURON_DEVICE_RESOURCE in spec["containers"][0]["resources"]["limits"]]
    # The serving pods, and the graphs Jobs where they compile on the serving family (trn2 does).
    compiling = stack_config.compile_pool is not None
    assert len(pods) == len(stack_config.shapes) * (2 if compiling else 1)
    assert {kind for kind, _, _ in pods} == ({"Deployment", "Job"} if compiling else {"Deployment"})
    for kind, name, spec in pods:
        (container,) = spec["containers"]
        devices = int(container["resources"]["limits"][NEURON_DEVICE_RESOURCE])
        cores = devices * catalog.cores_per_device(stack_config.serving_pool.family)
        assert cores == _ranks(container["command"]) == stack_config.compile.ranks(stack_config.serving.pool).count, \
            name


# --- the capacity table (planning/capacity.py, plans/<stack>/capacity.md) ---------------------------

def _request(devices, instance_types, cpu=22, memory_gib=89, ephemeral_gib=10):
    return capacity.PodRequest(SERVE, "neuron-x", instance_types, 2 * devices, 2 * devices, devices, cpu,
                               memory_gib, ephemeral_gib, None)


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


def test_memory_limits_a_pod_to_what_the_node_can_hold():
    # 370 GiB: one per trn1.32xlarge (512 - 16 GiB), although its devices would take four.
    fit = capacity.pods_per_node(_request(4, TRN1, memory_gib=370), "trn1.32xlarge")
    assert (fit.pods, fit.limited_by) == (1, "memory")


def test_a_nodes_disk_limits_pods_on_a_family_without_an_instance_store():
    """The review's inf2 case: 200 GiB of node disk per compile pod (what compile scratch asked for before it moved
    to a volume of its own) fits once per inf2 node, whatever its devices and memory would allow; trn1's instance
    store holds many."""
    fit = capacity.pods_per_node(_request(2, INF2, memory_gib=100, ephemeral_gib=200), "inf2.48xlarge")
    assert (fit.pods, fit.limited_by) == (1, "ephemeral storage")
    assert capacity.pods_per_node(_request(4, TRN1, memory_gib=100, ephemeral_gib=200), "trn1.32xlarge").pods == 4


def test_the_rendered_pods_fit_their_nodes_disks(rendering):
    """Every Neuron pod's node-disk request times the pods its node holds stays within that node's disk."""
    for group in capacity._groups(rendering):
        for name in group.request.instance_types:
            fit = capacity.pods_per_node(group.request, name)
            assert fit.pods * group.request.ephemeral_gib <= sizing.node_ephemeral_gib(name), name


def test_the_cheapest_mix_combines_instance_types():
    # 4 devices per pod: inf2.24xlarge holds 1, inf2.48xlarge 3; 4 pods cost least as one of each.
    mix = capacity.cheapest_mix(_request(4, INF2), 4, "us-east-1")
    assert str(mix) == "1 x inf2.24xlarge + 1 x inf2.48xlarge"
    assert mix.price("us-east-1") == pytest.approx(6.49063 + 12.98127)


def test_a_type_without_a_list_price_shows_as_not_listed_and_packs_by_node_count():
    trn2 = ("trn2.48xlarge",)
    mix = capacity.cheapest_mix(_request(1, trn2, cpu=10, memory_gib=100), 20, "us-west-2")
    assert str(mix) == "2 x trn2.48xlarge" and mix.price("us-west-2") is None


def test_what_is_not_listed_is_said_why_with_its_source_and_date():
    lines = capacity._not_listed("us-west-2", ["trn1.32xlarge", "trn2.3xlarge", "trn2.48xlarge"])
    assert lines[:3] == ["", "## Not listed", ""] and len(lines) == 4
    assert lines[3].startswith("- trn2.3xlarge, trn2.48xlarge: no on-demand list price committed for trn2: ")
    assert "zz_generated.pricing_aws.go, us-east-1, generated 2026-07-20" in lines[3]
    assert "Capacity Blocks for ML" in lines[3]
    assert capacity._not_listed("us-east-2", ["m7i.large"]) == [
        "", "## Not listed", "",
        "- m7i.large: no list prices committed for us-east-2: infra/catalog.py holds those of us-east-1, us-west-2."]
    assert capacity._not_listed("us-west-2", ["trn1.32xlarge", "m7i.large"]) == []


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
    tp, ranks = stack_config.compile.tensor_parallel, stack_config.compile.ranks(stack_config.serving.pool).count
    row = (f"| {SERVE} | {shapes} | {', '.join(serving_pools)} | {tp} | {ranks} | {ranks} "
           f"| {stack_config.serving.devices} | 0 |")
    assert row in text, row
    assert f"| {' + '.join(serving_pools)} | {stack_config.serving_pool.max_devices} |" in text
    assert "| no: " not in text, "a NodePool limit is below what its pods need at max"


def test_the_table_counts_the_device_less_jobs_their_nodes_and_their_scratch(rendering, stack_config):
    jobs = {job.what: job for job in capacity._cpu_jobs(rendering)}
    # The weights Job always; the graphs Jobs where they compile device-less (not on trn2).
    device_less = stack_config.shapes if stack_config.compile_pool is None else ()
    assert set(jobs) == {"weights", *(str(shape) for shape in device_less)}
    text = capacity.table(rendering)
    for what, job in jobs.items():
        assert f"| {what} | {job.instance_type} | {job.cpu:g} | {job.memory_gib:g} GiB | {job.scratch_gib} GiB gp3 |" in text
    scratch = sum(job.scratch_gib for job in jobs.values())
    assert f"+ {scratch} GiB gp3 |" in text
    node = catalog.hourly_price(stack_config.region, jobs["weights"].instance_type)
    if node is None:  # a region without committed prices: the table says why
        assert "\n## Not listed\n" in text and f"no list prices committed for {stack_config.region}" in text
        assert jobs["weights"].price(stack_config.region) is None
    else:
        assert jobs["weights"].price(stack_config.region) == pytest.approx(
            node + jobs["weights"].scratch_gib * 0.08 / 730)


def test_the_readme_shows_the_dev_table_as_generated():
    generated = (PLANS / "dev" / capacity.FILENAME).read_text()
    nodes = generated[generated.index("| what | nodes at min"):generated.index("\n\n## NodePool limits")]
    assert nodes in (REPO_ROOT / "README.md").read_text(), \
        f"README: copy the dev table from plans/dev/{capacity.FILENAME}"


# --- trn2: NxD Inference's ranks (issue 19) ------------------------------------------------------------------------

def test_the_ranks_are_the_tp_degree_or_nxd_inference_s_world_on_trn2():
    assert sizing.Ranks.of("trn1", 8) == sizing.Ranks(8) and sizing.Ranks(8).count == 8
    assert sizing.Ranks.of("trn2", 4).count == 4
    assert sizing.Ranks.of("trn2", 4, context_parallel=2).count == sizing.Ranks.of("trn2", 4, cfg_parallel=2).count == 8
    # On trn2 a world of 8 logical cores is 2 devices, which the scheduler extension places as 4: 8 cores idle.
    assert sizing.devices_for("trn2", ("trn2.48xlarge",), 8) == 4


def test_nxd_inference_replicates_clip_and_the_vae_decoder_and_holds_every_rank_while_sharding():
    by_name = {component.name: component for component in sizing.FLUX_DEV}
    ranks = sizing.Ranks(2, world=4)  # TP 2 with context parallelism
    assert [ranks.split(by_name[name]) for name in ("text_encoder", "text_encoder_2", "transformer", "vae_decoder")] \
        == [1, 4, 2, 1]
    assert [ranks.copies(by_name[name]) for name in ("text_encoder", "text_encoder_2", "transformer", "vae_decoder")] \
        == [4, 1, 2, 4]
    # The VAE decoder runs in the pipeline's dtype there (always float32 on ModelBuilder's path).
    assert ranks.component_bytes(by_name["vae_decoder"], "bfloat16") == 0.2 * GB
    # A serving pod reads CLIP and the VAE decoder 4 times, T5 once, the transformer twice.
    assert sizing.artifact_bytes("bfloat16", ranks) == pytest.approx((4 * 0.25 + 9.5 + 2 * 23.8 + 4 * 0.2) * GB)
    # shard_weights holds the transformer and all 4 ranks' halves of it at once.
    assert sizing.weights_memory_bytes("bfloat16", 2, 4) == 23.8 * GB + 4 * math.ceil(23.8 * GB * 1.25 / 2) + 8 * GIB
    # ModelBuilder's layout is what it was.
    assert sizing.artifact_bytes("bfloat16", sizing.Ranks(8)) == sizing.artifact_bytes("bfloat16")


def test_trn2_s_hbm_fit_is_the_rule_nxd_inference_s_compile_applies(monkeypatch):
    """One rule (common.neuron.trn2_rank_gib) for the compile and the config: a larger activation reserve there
    moves what the config accepts."""
    from common import neuron

    # bfloat16, TP 1: 0.25 + 9.5 + 23.8 + 0.2 GB of weights and 2 GiB of activations on one logical core.
    assert sizing.hbm_bytes_per_core(1, "bfloat16", world=1) == math.ceil(33.75 * GB + 2 * GIB)
    assert sizing.fitting_tensor_parallel("trn2", "bfloat16", data_parallel=2) == (2, 4, 8)
    monkeypatch.setattr(neuron, "TRN2_ACTIVATION_RESERVE_GIB", 10)
    assert sizing.fitting_tensor_parallel("trn2", "bfloat16") == (4, 8)
