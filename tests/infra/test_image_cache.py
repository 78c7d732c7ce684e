"""The image cache (issue 21): a snapshot per image digest and AMI, built in AWS by an SSM Automation runbook
that one State Manager association per cache key runs, restored by new Neuron nodes as containerd's root.

AWS cannot run here: the runbook's API steps and the association's run are checked as data (what SSM and IAM
would be handed), the runbook's Python steps run against a stand-in boto3 client, and the snapshot lookup is
answered by the offline mocks (planning/offline.py: the snapshot of the key filtered on, as the runbook tags
it). What only AWS can show is listed in the README's "Verified where"."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from infra import image_cache, versions
from infra.config import load_stack_config
from infra.image_cache import (
    BUILD_SCRIPT, CACHE_DEVICE, CACHE_LABEL, KEEP_SNAPSHOTS, NODE_SCRIPT, NODE_USER_DATA, cache_key, node_ami_parameter,
)
from infra.karpenter import ROOT_VOLUME, block_device_mappings
from infra.naming import IMAGE_CACHE_KEY_TAG, IMAGE_CACHE_TAG, stack_resource_name
from infra import catalog
from planning import capacity, offline
from planning.checks import karpenter
from planning.offline import ACCOUNT_ID, manifest, run_program, stack_file_config, stack_names

NODECLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"
ASSOCIATION = "aws:ssm/association:Association"
DOCUMENT = "aws:ssm/document:Document"
FAST_RESTORE = "aws:ebs/fastSnapshotRestore:FastSnapshotRestore"
IMAGE = "flux-neuron:image"
COLD_START = "flux-neuron:coldStart"
REPOSITORY = f"{ACCOUNT_ID}.dkr.ecr.us-west-2.amazonaws.com/flux"


def prebuilt(digit: str) -> dict:
    return {IMAGE: {"uri": f"{REPOSITORY}@sha256:{digit * 64}"}}


def cache_volume(rendering) -> dict | None:
    mappings = manifest(rendering.one(NODECLASS, "karpenter-default"))["spec"]["blockDeviceMappings"]
    return next((mapping["ebs"] for mapping in mappings if mapping["deviceName"] == CACHE_DEVICE), None)


def association(rendering):
    return rendering.one(ASSOCIATION, "image-cache")


@pytest.fixture(scope="module")
def by_digest():
    """The dev stack with one prebuilt image, another, and the first again: three `pulumi up`s."""
    return [run_program("dev", prebuilt(digit)) for digit in "a" "b" "a"]


def test_a_new_digest_yields_a_new_snapshot_and_an_unchanged_one_none(by_digest):
    first, changed, unchanged = by_digest
    assert cache_volume(first)["snapshotID"] != cache_volume(changed)["snapshotID"]
    assert cache_volume(unchanged)["snapshotID"] == cache_volume(first)["snapshotID"]
    # The build runs when the association is created, and only a changed parameter replaces it: an
    # unchanged digest leaves its inputs as they were, so Pulumi builds nothing.
    assert association(unchanged).inputs == association(first).inputs
    assert association(changed).inputs["parameters"]["CacheKey"] != association(first).inputs["parameters"]["CacheKey"]
    assert association(first).replace_on_changes == ("parameters",)


def test_the_node_class_restores_the_snapshot_of_the_key_the_association_builds(by_digest):
    for rendering in by_digest:
        parameters = association(rendering).inputs["parameters"]
        assert parameters["ImageRef"] == rendering.outputs["image"]
        assert parameters["CacheKey"] == cache_key(parameters["ImageRef"], "1.33")
        # The mocks answer the lookup with the snapshot the runbook tags with that key.
        assert cache_volume(rendering)["snapshotID"] == offline._ec2_id("snap", parameters["CacheKey"])


def test_the_built_image_is_cached_by_its_digest(rendering, stack_config):
    parameters = association(rendering).inputs["parameters"]
    assert parameters["ImageRef"] == rendering.outputs["image"] and "@sha256:" in parameters["ImageRef"]
    assert parameters["CacheKey"] == cache_key(rendering.outputs["image"], stack_config.kubernetes_version)
    assert parameters["AmiParameter"] == node_ami_parameter(stack_config.kubernetes_version)


def test_the_key_changes_with_the_image_and_the_ami_and_nothing_else():
    image = f"{REPOSITORY}@sha256:{'a' * 64}"
    assert cache_key(image, "1.33") == cache_key(image, "1.33")
    assert cache_key(image, "1.33") != cache_key(f"{REPOSITORY}@sha256:{'b' * 64}", "1.33")
    assert cache_key(image, "1.33") != cache_key(image, "1.34")
    assert re.fullmatch(r"[0-9a-f]{20}", cache_key(image, "1.33"))


@pytest.mark.parametrize("minor", sorted(versions.KUBERNETES_RELEASES))
def test_the_builder_boots_the_neuron_ami_the_node_class_alias_pins(minor):
    release = versions.KUBERNETES_RELEASES[minor]["al2023-ami-alias"].removeprefix("al2023@")
    assert node_ami_parameter(minor) == (
        f"/aws/service/eks/optimized-ami/{minor}/amazon-linux-2023/x86_64/neuron/"
        f"amazon-eks-node-al2023-x86_64-neuron-{minor}-{release}/image_id")


def test_the_association_parameters_are_ones_the_runbook_accepts(rendering):
    document = json.loads(rendering.one(DOCUMENT, "image-cache").inputs["content"])
    assert rendering.one(DOCUMENT, "image-cache").inputs["documentType"] == "Automation"
    parameters = association(rendering).inputs["parameters"]
    assert set(parameters) == set(document["parameters"])
    for name, declared in document["parameters"].items():
        if "allowedPattern" in declared:
            assert re.fullmatch(declared["allowedPattern"], parameters[name]), name
    assert association(rendering).inputs["name"] == rendering.one(DOCUMENT, "image-cache").outputs["name"]


def steps(rendering) -> dict[str, dict]:
    document = json.loads(rendering.one(DOCUMENT, "image-cache").inputs["content"])
    return {step["name"]: step for step in document["mainSteps"]}


def test_a_cached_key_builds_nothing_and_a_failed_build_leaves_no_builder(rendering):
    runbook = steps(rendering)
    order = list(runbook)
    branch = runbook["BuildUnlessCached"]["inputs"]
    assert branch["Choices"] == [{"NextStep": "LaunchBuilder", "Variable": "{{ FindCachedSnapshot.Found }}",
                                  "StringEquals": "no"}]
    assert runbook[branch["Default"]].get("isEnd") and runbook[branch["Default"]]["action"] == "aws:sleep"
    between = order[order.index("LaunchBuilder") + 1:order.index("TerminateBuilder")]
    assert between and all(runbook[name]["onFailure"] == "step:TerminateBuilder" for name in between)
    assert "onFailure" not in runbook["TerminateBuilder"] and runbook["PruneSnapshots"]["isEnd"]


def test_what_the_build_creates_carries_the_tag_its_role_is_limited_to(rendering, stack):
    stack_tag = stack_resource_name(stack)
    runbook = steps(rendering)
    launched = runbook["LaunchBuilder"]["inputs"]["TagSpecifications"]
    snapshot = runbook["CreateSnapshot"]["inputs"]["TagSpecifications"]
    assert {spec["ResourceType"] for spec in launched} == {"instance", "volume", "network-interface"}
    for spec in [*launched, *snapshot]:
        tags = {tag["Key"]: tag["Value"] for tag in spec["Tags"]}
        assert tags[IMAGE_CACHE_TAG] == stack_tag and tags[IMAGE_CACHE_KEY_TAG] == "{{ CacheKey }}"
    policy = json.loads(rendering.one("aws:iam/rolePolicy:RolePolicy", "image-cache-automation").inputs["policy"])
    statements = {statement["Sid"]: statement for statement in policy["Statement"]}
    for sid in ("LaunchOnlyTaggedBuilders", "CreateTaggedSnapshots"):
        assert statements[sid]["Condition"] == {"StringEquals": {f"aws:RequestTag/{IMAGE_CACHE_TAG}": stack_tag}}
    # Everything destructive, and every command, only on what carries the stack's tag.
    for sid in ("SnapshotBuilderVolumes", "TerminateBuilders", "PruneTheStacksSnapshots"):
        assert statements[sid]["Condition"] == {"StringEquals": {f"aws:ResourceTag/{IMAGE_CACHE_TAG}": stack_tag}}
    assert statements["RunTheBuildOnBuildersOnly"]["Condition"] == {
        "StringEquals": {f"ssm:resourceTag/{IMAGE_CACHE_TAG}": stack_tag}}
    subnet = runbook["LaunchBuilder"]["inputs"]["SubnetId"]
    assert any(resource.endswith(f":subnet/{subnet}")
               for resource in statements["LaunchFromTheAmiIntoTheBuildNetwork"]["Resource"])


def test_the_builder_gets_out_to_https_only(rendering):
    group = rendering.one("aws:ec2/securityGroup:SecurityGroup", "image-cache-builder").inputs
    assert group.get("ingress", []) == []
    assert [(rule["protocol"], rule["fromPort"], rule["toPort"]) for rule in group["egress"]] == [("tcp", 443, 443)]
    launch = steps(rendering)["LaunchBuilder"]["inputs"]
    assert launch["SecurityGroupIds"] == [rendering.one("aws:ec2/securityGroup:SecurityGroup",
                                                        "image-cache-builder").id]
    assert launch["MetadataOptions"]["HttpTokens"] == "required"
    assert launch["BlockDeviceMappings"][0]["Ebs"]["Encrypted"] is True


class _FakeEc2:
    """describe_snapshots filtered by tag as EC2 does; delete_snapshot recorded."""

    def __init__(self, snapshots: list[dict]):
        self.snapshots, self.deleted = snapshots, []

    def describe_snapshots(self, OwnerIds, Filters):  # noqa: N803 - boto3's argument names
        assert OwnerIds == ["self"]
        wanted = {entry["Name"]: entry["Values"] for entry in Filters}
        found = [s for s in self.snapshots
                 if all((s["State"] if name == "status" else s["Tags"].get(name.removeprefix("tag:"))) in values
                        for name, values in wanted.items())]
        return {"Snapshots": found}

    def delete_snapshot(self, SnapshotId):  # noqa: N803
        self.deleted.append(SnapshotId)


def run_step(rendering, name: str, ec2: _FakeEc2, monkeypatch, parameters: dict) -> dict:
    """Run one of the runbook's aws:executeScript steps as SSM would, with its parameters substituted."""
    step = steps(rendering)[name]["inputs"]
    payload = json.loads(re.sub(r"\{\{ (\w+) \}\}", lambda match: parameters[match[1]], json.dumps(step["InputPayload"])))
    monkeypatch.setitem(sys.modules, "boto3", types.SimpleNamespace(client=lambda service: ec2))
    namespace: dict = {}
    exec(step["Script"], namespace)
    return namespace[step["Handler"]](payload, None)


def snapshot(snapshot_id: str, stack_tag: str, key: str, state: str = "completed", age_days: int = 0) -> dict:
    return {"SnapshotId": snapshot_id, "State": state, "Tags": {IMAGE_CACHE_TAG: stack_tag, IMAGE_CACHE_KEY_TAG: key},
            "StartTime": datetime(2026, 8, 1, tzinfo=timezone.utc) - timedelta(days=age_days)}


def test_the_runbook_finds_a_completed_snapshot_of_its_key_and_stack_only(rendering, stack, monkeypatch):
    key = association(rendering).inputs["parameters"]["CacheKey"]
    mine = stack_resource_name(stack)
    for snapshots, found in (([snapshot("snap-1", mine, key)], "yes"),
                             ([snapshot("snap-1", mine, key, state="pending")], "no"),
                             ([snapshot("snap-1", mine, "0" * 20)], "no"),
                             ([snapshot("snap-1", "flux-neuron-other", key)], "no")):
        result = run_step(rendering, "FindCachedSnapshot", _FakeEc2(snapshots), monkeypatch, {"CacheKey": key})
        assert result == {"Found": found}


def test_the_runbook_keeps_the_newest_snapshots_of_the_stack_and_deletes_failed_ones(rendering, stack, monkeypatch):
    mine = stack_resource_name(stack)
    snapshots = [snapshot(f"snap-{age}", mine, f"{age:020d}", age_days=age) for age in range(4)]
    snapshots += [snapshot("snap-failed", mine, "9" * 20, state="error"),
                  snapshot("snap-building", mine, "8" * 20, state="pending", age_days=9),
                  snapshot("snap-theirs", "flux-neuron-other", "7" * 20, age_days=9)]
    ec2 = _FakeEc2(snapshots)
    run_step(rendering, "PruneSnapshots", ec2, monkeypatch, {})
    assert KEEP_SNAPSHOTS == 2 and ec2.deleted == ["snap-2", "snap-3", "snap-failed"]


def test_the_node_class_mounts_the_restored_volume_as_containerds_root(rendering):
    volume = cache_volume(rendering)
    assert volume["volumeSize"] == f"{image_cache.CACHE_VOLUME_GIB}Gi" and volume["deleteOnTermination"] is True
    # Restored volumes take the snapshot's encryption; the field is for blank volumes (the CRD's description).
    assert "encrypted" not in volume
    spec = manifest(rendering.one(NODECLASS, "karpenter-default"))["spec"]
    assert spec["userData"] == NODE_USER_DATA
    parts = NODE_USER_DATA.split("--FLUX-NEURON-IMAGE-CACHE")
    node_config = yaml.safe_load(parts[1].split("\n\n", 1)[1])
    assert node_config["spec"]["instance"]["localStorage"] == {"disabledMounts": ["Containerd"]}
    assert NODE_SCRIPT in parts[2]
    assert f"mkfs.xfs -f -L {CACHE_LABEL} {CACHE_DEVICE}" in BUILD_SCRIPT
    assert f"/dev/disk/by-label/{CACHE_LABEL}" in NODE_SCRIPT
    # The committed Karpenter v1.14.1 CRDs accept it: schema and CEL (a snapshot or a size on each volume).
    assert karpenter.problems([manifest(resource) for resource in rendering.kubernetes_objects()]) == []


def test_without_a_snapshot_nodes_keep_the_root_volume_and_pull():
    assert block_device_mappings(None) == [{"deviceName": "/dev/xvda", "ebs": ROOT_VOLUME}]
    assert block_device_mappings("snap-0123456789abcdef0")[0] == {"deviceName": "/dev/xvda", "ebs": ROOT_VOLUME}


@pytest.fixture
def no_snapshot_found(monkeypatch):
    """The lookup finds nothing: the snapshot was deleted by hand (the build itself fails `up` instead)."""
    monkeypatch.setattr(offline._Mocks, "_snapshot_ids", lambda self, query: {"id": self.region, "ids": [], **query})


def test_a_missing_snapshot_leaves_nodes_pulling(no_snapshot_found):
    rendering = run_program("dev", {COLD_START: {"fastSnapshotRestore": False}})
    assert cache_volume(rendering) is None
    assert rendering.of_type(FAST_RESTORE) == []


def test_a_missing_snapshot_with_fast_restore_stops_up_saying_how_to_rebuild():
    # In a process of its own: the program fails half-way, and what it left pending would fail the next run here.
    program = ("from planning import offline\n"
               "offline._Mocks._snapshot_ids = lambda self, query: {'id': self.region, 'ids': [], **query}\n"
               "offline.run_program('dev')\n")
    result = subprocess.run([sys.executable, "-c", program], cwd=offline.REPO_ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode != 0
    assert "RunError: coldStart.fastSnapshotRestore: the image-cache snapshot is missing" in result.stderr


def test_fast_restore_covers_every_zone_nodes_launch_in_and_is_costed_where_the_stack_opts_in(rendering, stack_config):
    """dev, prod and trn2 opt in (their files say why); schnell does not, and has none and pays none."""
    restores = rendering.of_type(FAST_RESTORE)
    assert cache_volume(rendering) is not None
    rows = [line for line in capacity.table(rendering).splitlines() if line.startswith("| image cache:")]
    if not stack_config.cold_start.fast_snapshot_restore:
        assert restores == [] and rows == []
        return
    assert sorted(r.inputs["availabilityZone"] for r in restores) == sorted(rendering.outputs["availabilityZones"])
    assert {r.inputs["snapshotId"] for r in restores} == {cache_volume(rendering)["snapshotID"]}
    # $0.75 per zone and hour where the stack's region has committed prices; else "not listed", and the table says why.
    per_zone = catalog.hourly_price(stack_config.region, catalog.FAST_SNAPSHOT_RESTORE)
    assert per_zone in (0.75, None)
    cost = "not listed" if per_zone is None else f"{per_zone * len(restores):.2f}"
    assert rows == [f"| image cache: fast snapshot restore in {len(restores)} zones | | {cost} | | {cost} |"]


def test_the_stacks_cover_fast_restore_on_and_off():
    configs = [load_stack_config(stack_file_config(stack)[0]) for stack in stack_names()]
    assert {config.cold_start.fast_snapshot_restore for config in configs} == {True, False}
    assert load_stack_config(stack_file_config("dev")[0]).cold_start.retain_snapshots_on_destroy is False


@pytest.mark.parametrize("script", [BUILD_SCRIPT.replace("{{ ImageRef }}", f"{REPOSITORY}@sha256:{'a' * 64}"),
                                    NODE_SCRIPT], ids=["build", "node"])
def test_the_scripts_are_shellcheck_clean(script):
    result = subprocess.run(["shellcheck", "--shell=bash", "-"], input=script, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
