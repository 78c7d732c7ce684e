"""The stack config schema (infra/config.py) and its reference (docs/config.md).

The real stack files load with the values they state; every bad config derived from the dev stack
file stops the program with one line naming the key, the bad value and what is allowed.
"""

import json
import re

import pulumi
import pytest
import yaml
from pydantic import ValidationError

from infra.config import (
    CONFIG_KEYS, ColdStartSettings, CompileSettings, ConfigError, ModelSource, NetworkSettings, NeuronPool,
    ServingSettings, StackConfig, SystemNodes, load_stack_config,
)
from planning.config_reference import DOC, REFRESH, with_table
from planning.offline import PLACEHOLDER_HF_TOKEN, REPO_ROOT, run_program, stack_file_config, stack_names, with_overrides
from common.shapes import Shape

REVISION = "3de623fc3c33e44ffbe2bad470d0f45bccf2eb21"
SHAPE_RULE = "'HxW' (height x width in pixels), each side a multiple of 16 between 64 and 2048"
DEV_RAW = stack_file_config("dev")[0]

STATED = {
    "dev": StackConfig(
        region="us-west-2",
        kubernetes_version="1.33",
        model=ModelSource("black-forest-labs/FLUX.1-dev", REVISION, 128),
        dtype="bfloat16",
        neuron_pools={"trn1": NeuronPool("trn1", ("trn1.32xlarge",), ("on-demand",), 48)},
        compile=CompileSettings("cpu", devices=None, tensor_parallel=8, timeout_minutes=360),
        serving=ServingSettings("trn1", devices=4, replicas=1, max_replicas=2, queue_size=4,
                                request_timeout_seconds=120),
        shapes=(Shape(1024, 576), Shape(256, 144), Shape(512, 512)),
        network=NetworkSettings("10.0.0.0/16", 3),
        existing_vpc=None,
        system_nodes=SystemNodes("m7i.xlarge", min_size=2, desired_size=2, max_size=4),
        hf_token=PLACEHOLDER_HF_TOKEN,
        cold_start=ColdStartSettings(fast_snapshot_restore=True),
    ),
    "prod": StackConfig(
        region="us-east-1",
        kubernetes_version="1.34",
        model=ModelSource("black-forest-labs/FLUX.1-dev", REVISION, 256),
        dtype="bfloat16",
        neuron_pools={"inf2": NeuronPool("inf2", ("inf2.24xlarge", "inf2.48xlarge"), ("on-demand",), 96)},
        compile=CompileSettings("cpu", devices=None, tensor_parallel=4, timeout_minutes=480),
        serving=ServingSettings("inf2", devices=2, replicas=3, max_replicas=10, queue_size=1,
                                request_timeout_seconds=120),
        shapes=(Shape(1024, 1024), Shape(1024, 576), Shape(576, 1024)),
        network=NetworkSettings("10.40.0.0/16", 3),
        existing_vpc=None,
        system_nodes=SystemNodes("m7i.xlarge", min_size=3, desired_size=3, max_size=6),
        hf_token=PLACEHOLDER_HF_TOKEN,
        cold_start=ColdStartSettings(fast_snapshot_restore=True),
    ),
    "trn2": StackConfig(
        region="us-east-2",
        kubernetes_version="1.34",
        model=ModelSource("black-forest-labs/FLUX.1-dev", REVISION, 512),
        dtype="bfloat16",
        neuron_pools={"trn2": NeuronPool("trn2", ("trn2.3xlarge", "trn2.48xlarge"), ("on-demand",), 32)},
        # Compiled on trn2 at TP 4 (no context or CFG split): 4 logical NeuronCores, one device.
        compile=CompileSettings("trn2", devices=1, tensor_parallel=4, context_parallel=1, cfg_parallel=1,
                                timeout_minutes=360),
        serving=ServingSettings("trn2", devices=1, replicas=1, max_replicas=2, queue_size=4,
                                request_timeout_seconds=120),
        shapes=(Shape(1024, 576), Shape(256, 144), Shape(512, 512)),
        network=NetworkSettings("10.60.0.0/16", 2),
        existing_vpc=None,
        system_nodes=SystemNodes("m7i.xlarge", min_size=2, desired_size=2, max_size=4),
        hf_token=PLACEHOLDER_HF_TOKEN,
        cold_start=ColdStartSettings(fast_snapshot_restore=True),
    ),
    "schnell": StackConfig(
        region="us-west-2",
        kubernetes_version="1.34",
        model=ModelSource("black-forest-labs/FLUX.1-schnell", "741f7c3ce8b383c54771c7003378a50191e9efe9", 256,
                          gated=False),
        dtype="bfloat16",
        neuron_pools={"inf2": NeuronPool("inf2", ("inf2.24xlarge", "inf2.48xlarge"), ("on-demand",), 36)},
        compile=CompileSettings("cpu", devices=None, tensor_parallel=4, timeout_minutes=360),
        serving=ServingSettings("inf2", devices=2, replicas=1, max_replicas=4, queue_size=4,
                                request_timeout_seconds=120),
        shapes=(Shape(1024, 1024), Shape(512, 512)),
        network=NetworkSettings("10.80.0.0/16", 3),
        existing_vpc=None,
        system_nodes=SystemNodes("m7i.xlarge", min_size=2, desired_size=2, max_size=4),
        hf_token=None,
    ),
}


LORA = {"id": "someone/flux-style-lora", "revision": "c" * 40, "scale": 0.8}


def dev(name):
    """One object or list of the dev stack file, to derive a bad value from."""
    return json.loads(DEV_RAW[f"flux-neuron:{name}"])


def dev_with(changes):
    """The dev stack file's raw config with keys changed (None removes one), as the CLI hands it over."""
    return with_overrides(DEV_RAW, changes)


@pytest.mark.parametrize("stack", stack_names())
def test_real_stack_files_load_with_the_values_they_state(stack):
    assert stack in STATED, f"Pulumi.{stack}.yaml is new: state its values in STATED"
    assert load_stack_config(stack_file_config(stack)[0]) == STATED[stack]


VPC = "vpc-0123456789abcdef0"
SUBNETS = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
RESERVATION = "cr-0123456789abcdef0"
KNOWN_KEYS = ("aws:region, flux-neuron:cluster, flux-neuron:coldStart, flux-neuron:compile, flux-neuron:dtype, "
              "flux-neuron:existingVpc, flux-neuron:graphCache, flux-neuron:hfToken, flux-neuron:image, "
              "flux-neuron:ingress, "
              "flux-neuron:kubernetesVersion, flux-neuron:model, flux-neuron:monitoring, "
              "flux-neuron:network, flux-neuron:neuronPools, flux-neuron:observability, "
              "flux-neuron:serving, flux-neuron:shapes, flux-neuron:systemNodes")

# The dev stack compiling on its serving family instead of device-less.
ON_TRN1 = {**dev("compile"), "pool": "trn1"}
# The dev stack's pool allowing Spot, and its serving within the Spot notice.
SPOT_TRN1 = {**dev("neuronPools")["trn1"], "capacityTypes": ["on-demand", "spot"]}
SPOT_SERVING = {**dev("serving"), "requestTimeoutSeconds": 75}

# The dev stack served on trn2 (issue 19): NxD Inference's Flux application, compiled on trn2 at TP 4.
TRN2_POOL = {"instanceTypes": ["trn2.3xlarge", "trn2.48xlarge"], "maxDevices": 32}
ON_TRN2 = {"flux-neuron:neuronPools": {"trn2": TRN2_POOL},
           "flux-neuron:compile": {"pool": "trn2", "tensorParallel": 4},
           "flux-neuron:serving": {**dev("serving"), "pool": "trn2"},
           "flux-neuron:model": {**dev("model"), "maxTextLength": 512}}


def on_trn2(compile_changes=None, **changes):
    return {**ON_TRN2, "flux-neuron:compile": {**ON_TRN2["flux-neuron:compile"], **(compile_changes or {})}, **changes}


# (change to the dev stack file, key named, bad value as shown, what is allowed)
BAD_CONFIGS = {
    "shape-side-not-multiple-of-16": (
        {"flux-neuron:shapes": ["65x64"]}, "flux-neuron:shapes[0]", "'65x64'", SHAPE_RULE),
    "shape-without-width": (
        {"flux-neuron:shapes": ["1024"]}, "flux-neuron:shapes[0]", "'1024'", SHAPE_RULE),
    "shape-side-too-large": (
        {"flux-neuron:shapes": ["4096x16"]}, "flux-neuron:shapes[0]", "'4096x16'", SHAPE_RULE),
    "duplicate-shape": (
        {"flux-neuron:shapes": [*dev("shapes"), "512x512"]}, "flux-neuron:shapes[3]", "'512x512'",
        "each shape once"),
    "no-shapes": (
        {"flux-neuron:shapes": []}, "flux-neuron:shapes", "[]", "a non-empty list of shapes 'HxW'"),
    "shapes-set-as-one-string": (
        {"flux-neuron:shapes": "1024x576"}, "flux-neuron:shapes", "'1024x576'", "a non-empty list of shapes 'HxW'"),
    "dtype-float16": (
        {"flux-neuron:dtype": "float16"}, "flux-neuron:dtype", "'float16'", "one of bfloat16, float32"),
    "devices-3-on-trn1.32xlarge": (
        {"flux-neuron:compile": {**ON_TRN1, "devices": 3}}, "flux-neuron:compile.devices", "3",
        "a device count that schedules on trn1 (trn1.32xlarge): 1, 4, 8, 16"),
    "devices-over-maxDevices": (
        {"flux-neuron:neuronPools": {"trn1": {**dev("neuronPools")["trn1"], "maxDevices": 2}}},
        "flux-neuron:serving.devices", "4", "at most the pool's maxDevices (2)"),
    "maxDevices-below-maxReplicas-and-surge": (
        {"flux-neuron:neuronPools": {"trn1": {**dev("neuronPools")["trn1"], "maxDevices": 32}}},
        "flux-neuron:neuronPools.trn1.maxDevices", "32",
        "at least 36: 3 shapes x (serving.maxReplicas 2 + 1 rollout surge) x 4 devices"),
    "maxDevices-below-maxReplicas-surge-and-compiles": (
        {"flux-neuron:neuronPools": {"trn1": {**dev("neuronPools")["trn1"], "maxDevices": 40}},
         "flux-neuron:compile": ON_TRN1},
        "flux-neuron:neuronPools.trn1.maxDevices", "40",
        "at least 48: 3 shapes x (serving.maxReplicas 2 + 1 rollout surge) x 4 devices + 3 graphs Jobs x 4 devices"),
    # Issue 17: graphs are compiled for serving.pool's family, on the cpu NodePool or on that family.
    "compile-pool-of-another-family": (
        {"flux-neuron:neuronPools": {**dev("neuronPools"), "inf2": {"maxDevices": 12}},
         "flux-neuron:compile": {**dev("compile"), "pool": "inf2"}},
        "flux-neuron:compile.pool", "'inf2'",
        "cpu (a device-less compile on the cpu NodePool, the default) or trn1, the family serving.pool serves on: "
        "the graphs are compiled for that family, and a Neuron node compiles only for its own"),
    "compile-pool-unknown": (
        {"flux-neuron:compile": {**dev("compile"), "pool": "gpu"}}, "flux-neuron:compile.pool", "'gpu'",
        "cpu or one of the configured neuronPools: trn1"),
    "compile-devices-on-cpu": (
        {"flux-neuron:compile": {**dev("compile"), "devices": 4}}, "flux-neuron:compile.devices", "4",
        "unset with compile.pool cpu: a device-less compile holds no Neuron device"),
    # Spot: an on-demand base under it, on the serving pool only, with burst to hold, requests that fit its notice.
    "spot-without-on-demand": (
        {"flux-neuron:neuronPools": {"trn1": {**dev("neuronPools")["trn1"], "capacityTypes": ["spot"]}}},
        "flux-neuron:neuronPools.trn1.capacityTypes", '["spot"]',
        "a list with on-demand too when it has spot: the pool's base (serving.replicas, the rollout surge, "
        "graphs Jobs compiling on it) runs on-demand, Spot only holds serving burst"),
    "compile-pool-without-on-demand": (
        {"flux-neuron:neuronPools": {"trn1": {**dev("neuronPools")["trn1"], "capacityTypes": ["reserved"],
                                              "capacityReservationIds": ["cr-0123456789abcdef0"]}},
         "flux-neuron:compile": ON_TRN1},
        "flux-neuron:neuronPools.trn1.capacityTypes", '["reserved"]',
        "a list with on-demand: compile.pool's Jobs run on-demand only"),
    "spot-on-a-pool-serving-does-not-use": (
        {"flux-neuron:neuronPools": {**dev("neuronPools"), "inf2": {"capacityTypes": ["on-demand", "spot"],
                                                                    "maxDevices": 12}}},
        "flux-neuron:neuronPools.inf2.capacityTypes", '["on-demand", "spot"]',
        "no spot on a pool that serving.pool (trn1) does not name: Spot holds only serving burst"),
    "spot-without-burst": (
        {"flux-neuron:neuronPools": {"trn1": SPOT_TRN1},
         "flux-neuron:serving": {**SPOT_SERVING, "maxReplicas": 1}},
        "flux-neuron:neuronPools.trn1.capacityTypes", '["on-demand", "spot"]',
        "no spot while serving.maxReplicas equals serving.replicas (1): Spot holds only the pods above "
        "serving.replicas"),
    "requestTimeoutSeconds-past-the-spot-notice": (
        {"flux-neuron:neuronPools": {"trn1": SPOT_TRN1}, "flux-neuron:serving": {**SPOT_SERVING,
                                                                                "requestTimeoutSeconds": 76}},
        "flux-neuron:serving.requestTimeoutSeconds", "76",
        "at most 75 while neuronPools.trn1.capacityTypes has spot: a serving pod's grace (15 s deregistration + "
        "the timeout + 10 s to exit) must end within the 120 s Spot interruption notice less 20 s for Karpenter "
        "to react"),
    "requestTimeoutSeconds-default-with-spot": (
        {"flux-neuron:neuronPools": {"trn1": SPOT_TRN1}, "flux-neuron:serving": dev("serving")},
        "flux-neuron:serving.requestTimeoutSeconds", "120", "at most 75 while neuronPools.trn1.capacityTypes has spot"),
    "maxDevices-below-the-on-demand-base-and-the-spot-burst": (
        {"flux-neuron:neuronPools": {"trn1": {**SPOT_TRN1, "maxDevices": 56}}, "flux-neuron:serving": SPOT_SERVING,
         "flux-neuron:compile": ON_TRN1},
        "flux-neuron:neuronPools.trn1.maxDevices", "56",
        "at least 60: the on-demand base 48 (3 shapes x (serving.replicas 1 + 1 rollout surge) x 4 devices + "
        "3 graphs Jobs x 4 devices, rounded up to whole 16-device nodes) + the Spot burst 12 (3 shapes x "
        "(serving.maxReplicas 2 - serving.replicas 1) x 4 devices)"),
    "devices-7-on-inf2.24xlarge": (
        {"flux-neuron:neuronPools": {**dev("neuronPools"), "inf2": {"instanceTypes": ["inf2.24xlarge"],
                                                                    "maxDevices": 48}},
         "flux-neuron:serving": {**dev("serving"), "pool": "inf2", "devices": 7}},
        "flux-neuron:serving.devices", "7", "a device count that schedules on inf2 (inf2.24xlarge): 1, 2, 3, 4, 5, 6"),
    "tensorParallel-not-dividing-the-heads": (
        {"flux-neuron:compile": {**dev("compile"), "tensorParallel": 3}}, "flux-neuron:compile.tensorParallel", "3",
        "one of 1, 2, 4, 8: a divisor of every sharded component's attention heads "
        "(FLUX.1-dev: T5-XXL encoder 64, transformer 24)"),
    "tensorParallel-16-does-not-divide-24": (
        {"flux-neuron:compile": {**dev("compile"), "tensorParallel": 16}}, "flux-neuron:compile.tensorParallel", "16",
        "one of 1, 2, 4, 8"),
    "tensorParallel-2-too-small-for-bf16-FLUX.1-dev-in-16GiB-cores": (
        {"flux-neuron:compile": {**dev("compile"), "tensorParallel": 2}}, "flux-neuron:compile.tensorParallel", "2",
        "4 or 8 on trn1 in bfloat16 (at 2 ranks, one per NeuronCore, core 0 would need 22.0 GiB of its 16 GiB HBM)"),
    "tensorParallel-4-too-small-in-float32": (
        {"flux-neuron:dtype": "float32", "flux-neuron:compile": {**dev("compile"), "tensorParallel": 4}},
        "flux-neuron:compile.tensorParallel", "4",
        "8 on trn1 in float32 (at 4 ranks, one per NeuronCore, core 0 would need 22.2 GiB of its 16 GiB HBM)"),
    "serving-devices-too-few-cores-for-tensorParallel": (
        {"flux-neuron:serving": {**dev("serving"), "devices": 1}}, "flux-neuron:serving.devices", "1",
        "enough NeuronCores for compile.tensorParallel 8: 1 trn1 devices have 2"),
    "serving-devices-above-what-tensorParallel-needs": (
        {"flux-neuron:serving": {**dev("serving"), "devices": 8}}, "flux-neuron:serving.devices", "8",
        "4 trn1 devices hold compile.tensorParallel 8 (one rank per NeuronCore); a larger count needs "
        "flux-neuron:serving.extraDevicesReason saying why"),
    "compile-devices-above-what-tensorParallel-needs": (
        {"flux-neuron:compile": {**ON_TRN1, "devices": 16}}, "flux-neuron:compile.devices", "16",
        "4 trn1 devices hold compile.tensorParallel 8 (one rank per NeuronCore); a larger count needs "
        "flux-neuron:compile.extraDevicesReason saying why"),
    "extraDevicesReason-without-extra-devices": (
        {"flux-neuron:serving": {**dev("serving"), "extraDevicesReason": "room for a sidecar"}},
        "flux-neuron:serving.extraDevicesReason", "'room for a sidecar'",
        "only with flux-neuron:serving.devices above the 4 that compile.tensorParallel 8 needs"),
    "extraDevicesReason-empty": (
        {"flux-neuron:serving": {**dev("serving"), "devices": 8, "extraDevicesReason": " "}},
        "flux-neuron:serving.extraDevicesReason", "' '",
        "a sentence saying why the pod needs more devices than its tensor-parallel ranks"),
    "tensorParallel-8-on-a-one-device-pool": (
        {"flux-neuron:neuronPools": {"trn1": {**dev("neuronPools")["trn1"], "instanceTypes": ["trn1.2xlarge"]}}},
        "flux-neuron:serving.pool", "'trn1'",
        "a pool with room for compile.tensorParallel 8 (a NeuronCore per rank): trn1.2xlarge have at most 2"),
    "pool-of-an-unconfigured-family": (
        {"flux-neuron:serving": {**dev("serving"), "pool": "inf2"}}, "flux-neuron:serving.pool", "'inf2'",
        "one of the configured neuronPools: trn1"),
    "pool-as-a-list": (
        {"flux-neuron:serving": {**dev("serving"), "pool": ["trn1"]}}, "flux-neuron:serving.pool", '["trn1"]',
        "one of the configured neuronPools: trn1"),
    "family-p5": (
        {"flux-neuron:neuronPools": {**dev("neuronPools"), "p5": {"maxDevices": 8}}}, "flux-neuron:neuronPools.p5",
        "'p5'", "a Neuron family: trn1, trn1n, trn2, inf2"),
    "instance-type-of-another-family": (
        {"flux-neuron:neuronPools": {"trn1": {**dev("neuronPools")["trn1"], "instanceTypes": ["inf2.48xlarge"]}}},
        "flux-neuron:neuronPools.trn1.instanceTypes", '["inf2.48xlarge"]',
        "a non-empty list of trn1 types: trn1.2xlarge, trn1.32xlarge"),
    "capacityType-preemptible": (
        {"flux-neuron:neuronPools": {"trn1": {**dev("neuronPools")["trn1"], "capacityTypes": ["preemptible"]}}},
        "flux-neuron:neuronPools.trn1.capacityTypes", '["preemptible"]',
        "a non-empty list of capacity types: on-demand, spot, reserved"),
    "capacityType-reserved-without-reservations": (
        {"flux-neuron:neuronPools": {"trn1": {**dev("neuronPools")["trn1"], "capacityTypes": ["reserved", "on-demand"]}}},
        "flux-neuron:neuronPools.trn1.capacityTypes", '["reserved", "on-demand"]',
        "reserved only with capacityReservationIds: Karpenter launches into the capacity reservations the "
        "EC2NodeClass selects, and selects none without them"),
    "capacityReservationIds-without-reserved": (
        {"flux-neuron:neuronPools": {"trn1": {**dev("neuronPools")["trn1"], "capacityReservationIds": [RESERVATION]}}},
        "flux-neuron:neuronPools.trn1.capacityReservationIds", f'["{RESERVATION}"]',
        "only with reserved in capacityTypes"),
    "capacityReservationIds-malformed": (
        {"flux-neuron:neuronPools": {"trn1": {**dev("neuronPools")["trn1"], "capacityTypes": ["reserved"],
                                              "capacityReservationIds": ["cr-X"]}}},
        "flux-neuron:neuronPools.trn1.capacityReservationIds", '["cr-X"]',
        "a list of at most 30 capacity reservation ids such as cr-0123456789abcdef0"),
    "capacityReservationIds-twice": (
        {"flux-neuron:neuronPools": {"trn1": {**dev("neuronPools")["trn1"], "capacityTypes": ["on-demand", "reserved"],
                                              "capacityReservationIds": [RESERVATION, RESERVATION]}}},
        "flux-neuron:neuronPools.trn1.capacityReservationIds[1]", repr(RESERVATION),
        "each capacity reservation id once, at most 30 over all pools (one EC2NodeClass selects them all)"),
    "capacityReservationIds-over-the-node-class-cap": (
        {"flux-neuron:neuronPools": {"trn1": {**dev("neuronPools")["trn1"], "capacityTypes": ["on-demand", "reserved"],
                                              "capacityReservationIds": [f"cr-{index:017x}" for index in range(30)]},
                                     "inf2": {"capacityTypes": ["reserved"], "maxDevices": 12,
                                              "capacityReservationIds": ["cr-1f"]}}},
        "flux-neuron:neuronPools.inf2.capacityReservationIds[0]", "'cr-1f'",
        "each capacity reservation id once, at most 30 over all pools"),
    "pool-without-maxDevices": (
        {"flux-neuron:neuronPools": {"trn1": {"instanceTypes": ["trn1.32xlarge"]}}},
        "flux-neuron:neuronPools.trn1.maxDevices", "null", "required: the NodePool's limit on Neuron devices"),
    "replicas-0": (
        {"flux-neuron:serving": {**dev("serving"), "replicas": 0}}, "flux-neuron:serving.replicas", "0",
        "an integer from 1 to 100"),
    "maxReplicas-below-replicas": (
        {"flux-neuron:serving": {**dev("serving"), "replicas": 3}}, "flux-neuron:serving.maxReplicas", "2",
        "an integer from serving.replicas (3) to 100"),
    "kubernetesVersion-1.20": (
        {"flux-neuron:kubernetesVersion": "1.20"}, "flux-neuron:kubernetesVersion", "'1.20'", "one of 1.33, 1.34"),
    "bad-region": (
        {"aws:region": "us-west"}, "aws:region", "'us-west'", "an AWS commercial region: af-south-1, ap-east-1,"),
    # Shaped like a region, but AWS has none of that name (issue 18).
    "region-that-does-not-exist": (
        {"aws:region": "us-west-9"}, "aws:region", "'us-west-9'", "an AWS commercial region: af-south-1,"),
    "missing-region": (
        {"aws:region": None}, "aws:region", "null",
        "required; an AWS commercial region such as us-west-2 (infra/regions.py lists them)"),
    "unpinned-model-revision": (
        {"flux-neuron:model": {**dev("model"), "revision": "main"}}, "flux-neuron:model.revision", "'main'",
        "the 40-hex commit of the model revision"),
    # Issue 20: adapters, each field with its own rule, and the token where something is gated.
    "lora-scale-zero": (
        {"flux-neuron:model": {**dev("model"), "loras": [{**LORA, "scale": 0}]}},
        "flux-neuron:model.loras[0].scale", "0", "a number from -8 to 8 other than 0"),
    "lora-scale-a-boolean": (
        {"flux-neuron:model": {**dev("model"), "loras": [{**LORA, "scale": True}]}},
        "flux-neuron:model.loras[0].scale", "true", "a number from -8 to 8 other than 0"),
    "lora-unpinned": (
        {"flux-neuron:model": {**dev("model"), "loras": [{**LORA, "revision": "main"}]}},
        "flux-neuron:model.loras[0].revision", "'main'", "the 40-hex commit of the adapter's repository"),
    "lora-file-not-safetensors": (
        {"flux-neuron:model": {**dev("model"), "loras": [{**LORA, "file": "lora.bin"}]}},
        "flux-neuron:model.loras[0].file", "'lora.bin'", "a .safetensors file of the repository"),
    "lora-file-outside-its-repository": (
        {"flux-neuron:model": {**dev("model"), "loras": [{**LORA, "file": "../x.safetensors"}]}},
        "flux-neuron:model.loras[0].file", "'../x.safetensors'", "a .safetensors file of the repository"),
    "lora-unknown-field": (
        {"flux-neuron:model": {**dev("model"), "loras": [{**LORA, "weight": 1}]}},
        "flux-neuron:model.loras[0].weight", "1", "unknown field; allowed fields are id, revision, file, scale, gated"),
    "lora-without-id": (
        {"flux-neuron:model": {**dev("model"), "loras": [{"revision": LORA["revision"], "scale": 1}]}},
        "flux-neuron:model.loras[0].id", "null", "required: the adapter's HuggingFace repository id"),
    "lora-twice": (
        {"flux-neuron:model": {**dev("model"), "loras": [LORA, {**LORA, "scale": 0.5}]}},
        "flux-neuron:model.loras[1].id", repr(LORA["id"]), "each repository file once"),
    "too-many-loras": (
        {"flux-neuron:model": {**dev("model"), "loras": [{**LORA, "file": f"{n}.safetensors"} for n in range(9)]}},
        "flux-neuron:model.loras", None, "a list of at most 8 adapters"),
    "gated-adapter-without-token": (
        {"flux-neuron:model": {**dev("model"), "gated": False, "loras": [{**LORA, "gated": True}]},
         "flux-neuron:hfToken": None},
        "flux-neuron:hfToken", "null", f"required: {LORA['id']} is gated"),
    "maxTextLength-over-T5s-limit": (
        {"flux-neuron:model": {**dev("model"), "maxTextLength": 1024}}, "flux-neuron:model.maxTextLength", "1024",
        "an integer from 1 to 512"),
    "cidr-prefix-8": (
        {"flux-neuron:network": {"cidr": "10.0.0.0/8"}}, "flux-neuron:network.cidr", "'10.0.0.0/8'",
        "an IPv4 network from /16 to /20"),
    "cidr-not-a-network": (
        {"flux-neuron:network": {"cidr": "10.0.0/16"}}, "flux-neuron:network.cidr", "'10.0.0/16'",
        "an IPv4 network from /16 to /20"),
    "one-zone-listed": (
        {"flux-neuron:network": {"zones": ["us-west-2b"]}}, "flux-neuron:network.zones", '["us-west-2b"]',
        "a list of 2 or 3 distinct availability zone names of the region"),
    "not-a-zone-name": (
        {"flux-neuron:network": {"zones": ["us-west-2b", "2c"]}}, "flux-neuron:network.zones",
        '["us-west-2b", "2c"]', "a list of 2 or 3 distinct availability zone names of the region"),
    "a-zone-listed-twice": (
        {"flux-neuron:network": {"zones": ["us-west-2b", "us-west-2b"]}}, "flux-neuron:network.zones",
        '["us-west-2b", "us-west-2b"]', "a list of 2 or 3 distinct availability zone names of the region"),
    "zone-the-region-does-not-have": (
        {"flux-neuron:network": {"zones": ["us-west-2b", "us-west-2e"]}}, "flux-neuron:network.zones[1]",
        "'us-west-2e'", "an availability zone of us-west-2: us-west-2a, us-west-2b, us-west-2c, us-west-2d"),
    "zone-of-another-region": (
        {"flux-neuron:network": {"zones": ["us-west-2b", "us-east-1c"]}}, "flux-neuron:network.zones[1]",
        "'us-east-1c'", "an availability zone of us-west-2: "),
    "zone-count-disagreeing-with-the-zones": (
        {"flux-neuron:network": {"zones": ["us-west-2b", "us-west-2c"], "availabilityZones": 3}},
        "flux-neuron:network.availabilityZones", "3", "unset, or the number of network.zones (2)"),
    "existingVpc-with-one-private-subnet": (
        {"flux-neuron:existingVpc": {"vpcId": VPC, "privateSubnetIds": SUBNETS[:1], "publicSubnetIds": SUBNETS}},
        "flux-neuron:existingVpc.privateSubnetIds", json.dumps(SUBNETS[:1]), "a list of at least 2 subnet ids"),
    "bad-vpc-id": (
        {"flux-neuron:existingVpc": {"vpcId": "vpc-xyz", "privateSubnetIds": SUBNETS, "publicSubnetIds": SUBNETS}},
        "flux-neuron:existingVpc.vpcId", "'vpc-xyz'", "a VPC id such as vpc-0123456789abcdef0"),
    "top-level-key-typo": (
        {"flux-neuron:shapes": None, "flux-neuron:shape": dev("shapes")}, "flux-neuron:shape",
        repr(json.dumps(dev("shapes"))), f"unknown key; known keys are {KNOWN_KEYS}"),
    "unknown-field": (
        {"flux-neuron:serving": {**dev("serving"), "replica": 2}}, "flux-neuron:serving.replica", "2",
        "unknown field; allowed fields are pool, devices, extraDevicesReason, replicas, maxReplicas, queueSize, "
        "requestTimeoutSeconds"),
    "system-nodes-on-a-neuron-type": (
        {"flux-neuron:systemNodes": {"instanceType": "inf2.xlarge"}}, "flux-neuron:systemNodes.instanceType",
        "'inf2.xlarge'", "a general-purpose EC2 instance type such as m7i.xlarge (not a Neuron type)"),
    "system-nodes-desired-over-max": (
        {"flux-neuron:systemNodes": {"desiredSize": 5}}, "flux-neuron:systemNodes.desiredSize", "5",
        "an integer from systemNodes.minSize (2) to systemNodes.maxSize (4)"),
    "missing-neuronPools": (
        {"flux-neuron:neuronPools": None}, "flux-neuron:neuronPools", "null",
        "required; map of family (trn1, trn1n, trn2, inf2)"),
    # Refusals of a value's type say the same as those of its range, however the rule is checked.
    "maxReplicas-as-a-string": (
        {"flux-neuron:serving": {**dev("serving"), "maxReplicas": "3"}}, "flux-neuron:serving.maxReplicas", "'3'",
        "an integer from serving.replicas (1) to 100"),
    "replicas-as-a-boolean": (
        {"flux-neuron:serving": {**dev("serving"), "replicas": True}}, "flux-neuron:serving.replicas", "true",
        "an integer from 1 to 100"),
    "devices-as-a-string": (
        {"flux-neuron:serving": {**dev("serving"), "devices": "4"}}, "flux-neuron:serving.devices", "'4'",
        "a device count that schedules on trn1 (trn1.32xlarge): 1, 4, 8, 16"),
    "certificateArn-as-a-number": (
        {"flux-neuron:ingress": {"certificateArn": 5}}, "flux-neuron:ingress.certificateArn", "5",
        "an ACM certificate ARN in us-west-2"),
    "compile-as-a-list": (
        {"flux-neuron:compile": [dev("compile")]}, "flux-neuron:compile", json.dumps([dev("compile")]),
        "an object with fields pool, devices, extraDevicesReason, tensorParallel, contextParallel, cfgParallel, "
        "timeoutMinutes"),
    "pool-as-a-number": (
        {"flux-neuron:neuronPools": {"trn1": 80}}, "flux-neuron:neuronPools.trn1", "80",
        "an object with fields instanceTypes, capacityTypes, maxDevices"),
    # A pool's family is the key it is configured under.
    "family-inside-a-pool": (
        {"flux-neuron:neuronPools": {"trn1": {**dev("neuronPools")["trn1"], "family": "inf2"}}},
        "flux-neuron:neuronPools.trn1.family", "'inf2'",
        "unknown field; allowed fields are instanceTypes, capacityTypes, maxDevices"),
    # A rule about a list names the list, whichever item breaks it.
    "existingVpc-with-a-malformed-subnet": (
        {"flux-neuron:existingVpc": {"vpcId": VPC, "privateSubnetIds": [SUBNETS[0], "subnet-x"],
                                     "publicSubnetIds": SUBNETS}},
        "flux-neuron:existingVpc.privateSubnetIds", json.dumps([SUBNETS[0], "subnet-x"]),
        "a list of at least 2 subnet ids"),
    "image-repository-with-capitals": (
        {"flux-neuron:image": {"repository": "Flux_Neuron"}}, "flux-neuron:image.repository", "'Flux_Neuron'",
        "an ECR repository name in the stack's region: 2-256 lowercase letters, digits and single . _ - or / "
        "between them"),
    "image-repository-with-a-prebuilt-uri": (
        {"flux-neuron:image": {"uri": f"123456789012.dkr.ecr.us-west-2.amazonaws.com/flux@sha256:{'0' * 64}",
                               "repository": "flux-neuron-dev"}},
        "flux-neuron:image.repository", "'flux-neuron-dev'", "unset with image.uri: a prebuilt image is pushed nowhere"),
    "another-stacks-repository-deleted": (
        {"flux-neuron:image": {"repository": "flux-neuron-prod", "retainOnDestroy": False}},
        "flux-neuron:image.retainOnDestroy", "false",
        "true with image.repository: that repository is not this stack's to delete"),
    "fastSnapshotRestore-as-a-string": (
        {"flux-neuron:coldStart": {"fastSnapshotRestore": "yes"}}, "flux-neuron:coldStart.fastSnapshotRestore",
        "'yes'", "true or false"),
    "coldStart-with-an-unknown-field": (
        {"flux-neuron:coldStart": {"snapshotZones": ["us-west-2a"]}}, "flux-neuron:coldStart.snapshotZones",
        '["us-west-2a"]', "unknown field; allowed fields are fastSnapshotRestore, retainSnapshotsOnDestroy"),
    # trn2 (issue 19): what NxD Inference's Flux application rejects, and degrees a logical NeuronCore cannot hold.
    "contextParallel-4": (
        on_trn2({"contextParallel": 4}), "flux-neuron:compile.contextParallel", "4",
        "1 or 2: NxD Inference's Flux application splits the backbone in two at most"),
    "contextParallel-and-cfgParallel": (
        on_trn2({"contextParallel": 2, "cfgParallel": 2}), "flux-neuron:compile.cfgParallel", "2",
        "1 with compile.contextParallel 2: NxD Inference's Flux application splits the backbone by context or by "
        "CFG, not both"),
    "contextParallel-on-trn1": (
        {"flux-neuron:compile": {**dev("compile"), "contextParallel": 2}}, "flux-neuron:compile.contextParallel", "2",
        "1 on trn1 (serving.pool): context and CFG parallelism split the backbone of NxD Inference's Flux "
        "application, which serves on trn2 only"),
    "cfgParallel-on-trn1": (
        {"flux-neuron:compile": {**dev("compile"), "cfgParallel": 2}}, "flux-neuron:compile.cfgParallel", "2",
        "1 on trn1 (serving.pool): context and CFG parallelism"),
    "maxTextLength-other-than-512-on-trn2": (
        on_trn2(**{"flux-neuron:model": dev("model")}), "flux-neuron:model.maxTextLength", "128",
        "512 with serving.pool trn2: NxD Inference's Flux application traces T5 for exactly 512 tokens"),
    "trn2-compiled-device-less": (
        on_trn2({"pool": "cpu"}), "flux-neuron:compile.pool", "'cpu'",
        "trn2 with serving.pool trn2: NxD Inference's Flux compile is verified here only up to HLO generation, so "
        "whether it runs without a Neuron device is unshown; its graphs compile on trn2 nodes"),
    "contextParallel-with-an-odd-image-token-count": (
        on_trn2({"contextParallel": 2}, **{"flux-neuron:shapes": ["1024x576", "80x112"]}), "flux-neuron:shapes[1]",
        "'80x112'", "a shape with an even image-token count with compile.contextParallel 2, which splits them in two: "
        "80x112 has 35"),
    "tensorParallel-1-over-a-trn2-logical-core": (
        on_trn2({"tensorParallel": 1}), "flux-neuron:compile.tensorParallel", "1",
        "2 or 4 or 8 on trn2 in bfloat16 (at 1, each of the 1 ranks, one per logical NeuronCore, would hold 33.4 GiB "
        "of its 24 GiB HBM: common.neuron's rule)"),
    "tensorParallel-1-with-contextParallel-2-over-a-trn2-logical-core": (
        on_trn2({"tensorParallel": 1, "contextParallel": 2}), "flux-neuron:compile.tensorParallel", "1",
        "2 or 4 or 8 on trn2 in bfloat16 with compile.contextParallel 2 (at 1, each of the 2 ranks, one per logical "
        "NeuronCore, would hold 29.0 GiB of its 24 GiB HBM"),
    "tensorParallel-2-in-float32-over-a-trn2-logical-core": (
        on_trn2({"tensorParallel": 2}, **{"flux-neuron:dtype": "float32"}), "flux-neuron:compile.tensorParallel",
        "2", "4 or 8 on trn2 in float32 (at 2, each of the 2 ranks"),
    "world-of-8-on-a-one-device-trn2-pool": (
        on_trn2({"contextParallel": 2}, **{"flux-neuron:neuronPools": {
            "trn2": {**TRN2_POOL, "instanceTypes": ["trn2.3xlarge"]}}}), "flux-neuron:compile.pool", "'trn2'",
        "a pool with room for the 8 ranks of compile.tensorParallel 4 x compile.contextParallel 2 (a NeuronCore per "
        "rank): trn2.3xlarge have at most 4"),
    "serving-devices-too-few-logical-cores-for-the-world": (
        on_trn2({"cfgParallel": 2}, **{"flux-neuron:serving": {**dev("serving"), "pool": "trn2", "devices": 1}}),
        "flux-neuron:serving.devices", "1",
        "enough NeuronCores for the 8 ranks of compile.tensorParallel 4 x compile.cfgParallel 2: 1 trn2 devices "
        "have 4"),
    # A default is held to the rules as a given value is.
    "minSize-above-the-default-maxSize": (
        {"flux-neuron:systemNodes": {"minSize": 5}}, "flux-neuron:systemNodes.maxSize", "4",
        "an integer from systemNodes.minSize (5) to 10"),
}


@pytest.mark.parametrize(("changes", "key", "shown", "allowed"), BAD_CONFIGS.values(), ids=BAD_CONFIGS)
def test_a_bad_config_names_the_key_the_value_and_what_is_allowed(changes, key, shown, allowed):
    with pytest.raises(ConfigError) as raised:
        load_stack_config(dev_with(changes))
    assert raised.value.key == key
    message = str(raised.value)
    # shown None: a value too long to state here.
    assert message.startswith(f"config {key}: {shown} is not allowed: " if shown else f"config {key}: "), message
    assert " is not allowed: " in message
    assert allowed in message.split(" is not allowed: ", 1)[1], message


def test_adapters_are_refused_on_trn2_where_nxd_inference_shards_the_checkpoint_itself():
    raw = stack_file_config("trn2")[0]
    model = {**json.loads(raw["flux-neuron:model"]), "loras": [LORA]}
    with pytest.raises(ConfigError) as raised:
        load_stack_config(with_overrides(raw, {"flux-neuron:model": model}))
    assert raised.value.key == "flux-neuron:model.loras"
    assert str(raised.value) == (
        f'config flux-neuron:model.loras: ["{LORA["id"]}"] is not allowed: no loras with serving.pool trn2: adapters '
        "are merged into the weights on trn1, trn1n, inf2 only (NxD Inference shards trn2's checkpoint itself)")


def test_a_loaded_config_cannot_be_changed():
    config = load_stack_config(DEV_RAW)
    with pytest.raises(ValidationError, match="frozen"):
        config.serving.replicas = 2  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        config.neuron_pools["trn1"].max_devices = 1  # type: ignore[misc]


def test_config_errors_are_run_errors_that_pulumi_prints_without_a_traceback():
    assert issubclass(ConfigError, pulumi.RunError)


def test_the_program_stops_on_a_bad_config_before_any_resource(constructed_resources):
    with pytest.raises(ConfigError, match=r"^config flux-neuron:shapes\[0\]: '65x64' is not allowed: "):
        run_program("dev", {"flux-neuron:shapes": ["65x64"]})
    assert constructed_resources == ["pulumi:pulumi:Stack"]


@pytest.mark.parametrize("key", CONFIG_KEYS, ids=lambda key: key.name)
def test_a_key_is_required_exactly_when_its_rule_says_so(key):
    raw = dev_with({})
    raw.pop(key.full_name, None)
    if key.rule.startswith("required;"):
        with pytest.raises(ConfigError, match=re.escape(f"config {key.full_name}: null is not allowed: {key.rule}")):
            load_stack_config(raw)
    elif key.rule.startswith("required when"):  # dev's case: the message names what makes it required
        with pytest.raises(ConfigError, match=re.escape(f"config {key.full_name}: null is not allowed: required: ")):
            load_stack_config(raw)
    else:
        load_stack_config(raw)


def _attribute(name):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@pytest.mark.parametrize("key", [key for key in CONFIG_KEYS if key.default is not None], ids=lambda key: key.name)
def test_the_documented_defaults_are_the_ones_applied(key):
    raw = dev_with({})
    if isinstance(key.default, dict):
        stated = json.loads(raw.get(key.full_name, "{}"))
        raw[key.full_name] = json.dumps({field: value for field, value in stated.items() if field not in key.default})
        section = getattr(load_stack_config(raw), _attribute(key.name))
        # As JSON, as the document states them (a tuple is a list there).
        assert json.loads(json.dumps({field: getattr(section, _attribute(field)) for field in key.default})) == \
            key.default
    else:
        raw.pop(key.full_name)
        assert getattr(load_stack_config(raw), _attribute(key.name)) == key.default


def test_docs_config_md_is_the_schema_reference():
    document = DOC.read_text()
    assert document == with_table(document), f"docs/config.md is out of date with infra/config.py: run {REFRESH}"


def _field_names(value):
    if isinstance(value, dict):
        for name, item in value.items():
            yield name
            yield from _field_names(item)
    elif isinstance(value, list):
        for item in value:
            yield from _field_names(item)


@pytest.mark.parametrize("stack", stack_names())
def test_every_key_of_the_stack_files_is_documented(stack):
    document = DOC.read_text()
    rules = {key.full_name: key.rule for key in CONFIG_KEYS}
    stated = yaml.safe_load((REPO_ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    for name, value in stated.items():
        assert f"`{name}`" in document, f"{name} (Pulumi.{stack}.yaml) is not in docs/config.md"
        for field in _field_names(value):
            assert re.search(rf"\b{re.escape(field)}\b", rules.get(name, "")), \
                f"{name}.{field} (Pulumi.{stack}.yaml) is not in the rule of {name}"


def test_the_documented_sizing_messages_are_the_ones_given():
    document = DOC.read_text()
    for changes in ({"flux-neuron:serving": {**dev("serving"), "devices": 8}},
                    {"flux-neuron:compile": {**dev("compile"), "tensorParallel": 2}},
                    on_trn2({"tensorParallel": 1, "contextParallel": 2})):
        with pytest.raises(ConfigError) as raised:
            load_stack_config(dev_with(changes))
        message = str(raised.value)
        assert message in document, f"docs/config.md shows another message than: {message}"


def test_a_neuron_compile_pool_without_memory_for_one_compile_is_refused(monkeypatch):
    """No catalog type lacks it today at a TP degree that fits HBM; a compiler needing far more memory than the
    estimate would (trn2.3xlarge: 128 GiB)."""
    from infra import sizing

    monkeypatch.setattr(sizing, "COMPILER_WORKING_SET_BYTES", 200 * sizing.GIB)
    changes = on_trn2(**{"flux-neuron:neuronPools": {"trn2": {**TRN2_POOL, "instanceTypes": ["trn2.3xlarge"]}}})
    with pytest.raises(ConfigError) as raised:
        load_stack_config(dev_with(changes))
    assert str(raised.value) == (
        "config flux-neuron:compile.pool: 'trn2' is not allowed: cpu, or a pool with an instance type of at least "
        "246 GiB holding compile.devices: one compile builds the transformer once and traces a rank of it "
        "(an estimate)")
    # trn2.48xlarge's 2 TiB hold it (trn2 graphs compile on trn2 only: the cpu NodePool is no way out there).
    load_stack_config(dev_with(on_trn2()))


def test_a_trn2_pod_takes_the_devices_of_nxd_inference_s_world():
    """Cores per pod = the world size (common.neuron.flux_world_size), 4 logical NeuronCores per trn2 device, in a
    group the scheduler extension places (1, 4, 8, 16)."""
    config = load_stack_config(dev_with(on_trn2()))
    assert (config.compile.devices, config.serving.devices) == (1, 1)
    # TP 4 with context parallelism: 8 ranks, 2 devices, placed as 4 (3 shapes x 3 pods + 3 Jobs, 4 devices each).
    pools = {"trn2": {**TRN2_POOL, "maxDevices": 48}}
    config = load_stack_config(dev_with(on_trn2({"contextParallel": 2}, **{"flux-neuron:neuronPools": pools})))
    assert (config.compile.devices, config.serving.devices) == (4, 4)
    with pytest.raises(ConfigError, match=r"^config flux-neuron:neuronPools.trn2.maxDevices: 32 is not allowed: at "
                                          r"least 48: 3 shapes x \(serving.maxReplicas 2 \+ 1 rollout surge\) x 4 "
                                          r"devices \+ 3 graphs Jobs x 4 devices$"):
        load_stack_config(dev_with(on_trn2({"contextParallel": 2})))
