"""Zones where the instances are (issue 13, item 4): the VPC's zones are those EC2 offers every Neuron
pool's types in, and a count or an existing VPC's subnets that cannot meet that are refused before
anything is created. EC2 is a stand-in here: the planning mocks answer the offerings per region
(planning/offline.py, MOCK_OFFERED_LETTERS)."""

import pytest

from infra.config import ConfigError, NeuronPool
from infra.network import choose_zones, qualifying_zones
from planning import offline
from planning.offline import mock_offered_zones, mock_zones, run_program

SUBNET = "aws:ec2/subnet:Subnet"
NETWORK = "flux-neuron:network"
EXISTING_VPC = "flux-neuron:existingVpc"
TRN1 = NeuronPool("trn1", ("trn1.32xlarge",), ("on-demand",), 16)
INF2 = NeuronPool("inf2", ("inf2.24xlarge", "inf2.48xlarge"), ("on-demand",), 12)
ZONES = ["us-west-2d", "us-west-2a", "us-west-2c", "us-west-2b"]


def private_zones(rendering):
    # Sorted: the mocks record resources as the engine's threads register them, in no fixed order.
    return sorted(subnet.inputs["availabilityZone"] for subnet in rendering.of_type(SUBNET)
                  if subnet.inputs["tags"].get("kubernetes.io/role/internal-elb") == "1")


def test_each_stacks_zones_offer_a_type_of_every_pool_its_pods_use(rendering, stack_config):
    pools = stack_config.neuron_pools_in_use
    zones = private_zones(rendering)
    assert len(zones) == stack_config.network.availability_zones
    for zone in zones:
        for pool in pools:
            assert any(zone in mock_offered_zones(stack_config.region, name) for name in pool.instance_types)


def test_dev_skips_the_first_zone_where_trn1_is_not_offered():
    rendering = run_program("dev")
    assert "us-west-2a" not in mock_offered_zones("us-west-2", "trn1.32xlarge")
    assert private_zones(rendering) == ["us-west-2b", "us-west-2c", "us-west-2d"]
    assert rendering.outputs["availabilityZones"] == ["us-west-2b", "us-west-2c", "us-west-2d"]


def test_the_zones_are_those_offering_every_pool_in_name_order():
    offered = {"trn1.32xlarge": {"us-west-2b", "us-west-2c", "us-west-2d"},
               "inf2.24xlarge": {"us-west-2a", "us-west-2d"}, "inf2.48xlarge": {"us-west-2c"}}
    # One type of each pool is enough: inf2.48xlarge in c, inf2.24xlarge in d.
    assert qualifying_zones(ZONES, (TRN1, INF2), offered) == ["us-west-2c", "us-west-2d"]
    assert choose_zones(2, ZONES, (TRN1, INF2), offered) == ["us-west-2c", "us-west-2d"]
    assert choose_zones(2, ZONES, (TRN1,), offered) == ["us-west-2b", "us-west-2c"]


def test_too_few_qualifying_zones_are_refused_naming_the_key_the_count_the_zones_and_the_types():
    offered = {"trn1.32xlarge": {"us-west-2c", "us-west-2d"}, "inf2.24xlarge": set(), "inf2.48xlarge": set(ZONES)}
    with pytest.raises(ConfigError) as raised:
        choose_zones(3, ZONES, (TRN1, INF2), offered)
    assert str(raised.value) == (
        "config flux-neuron:network.availabilityZones: 3 is not allowed: at most 2: only us-west-2c, us-west-2d "
        "of us-west-2a, us-west-2b, us-west-2c, us-west-2d offer an instance type of every Neuron pool, "
        "trn1 (trn1.32xlarge), inf2 (inf2.24xlarge, inf2.48xlarge); lower it, or choose instance types offered "
        "in more zones")


def test_the_program_stops_on_too_few_zones_before_any_resource(monkeypatch, constructed_resources):
    monkeypatch.setitem(offline.MOCK_OFFERED_LETTERS, "us-west-2", {"trn1": "cd"})
    with pytest.raises(ConfigError, match=r"^config flux-neuron:network.availabilityZones: 3 is not allowed: "
                                          r"at most 2: only us-west-2c, us-west-2d of "):
        run_program("dev")
    assert constructed_resources == ["pulumi:pulumi:Stack"]
    assert private_zones(run_program("dev", {NETWORK: {"availabilityZones": 2}})) == ["us-west-2c", "us-west-2d"]


def existing_vpc(*private_subnets):
    return {"vpcId": "vpc-0123456789abcdef0", "privateSubnetIds": list(private_subnets),
            "publicSubnetIds": ["subnet-0000000000000000c", "subnet-0000000000000000d"]}


def test_an_existing_vpcs_private_subnets_in_qualifying_zones_are_used():
    # The mocks put a subnet in the zone its last hex digit picks: b -> us-west-2d, 9 -> us-west-2b.
    subnets = ["subnet-0000000000000000b", "subnet-00000000000000009"]
    assert [offline.mock_subnet_zone("us-west-2", subnet) for subnet in subnets] == ["us-west-2d", "us-west-2b"]
    rendering = run_program("dev", {EXISTING_VPC: existing_vpc(*subnets)})
    assert rendering.one("eks:index:Cluster", "cluster").inputs["privateSubnetIds"] == subnets


def test_an_existing_private_subnet_where_no_pool_type_is_offered_is_refused(constructed_resources):
    subnets = ["subnet-0000000000000000b", "subnet-00000000000000008"]
    assert offline.mock_subnet_zone("us-west-2", subnets[1]) == mock_zones("us-west-2")[0] == "us-west-2a"
    with pytest.raises(ConfigError) as raised:
        run_program("dev", {EXISTING_VPC: existing_vpc(*subnets)})
    assert str(raised.value) == (
        f"config flux-neuron:existingVpc.privateSubnetIds: [\"{subnets[0]}\", \"{subnets[1]}\"] is not allowed: "
        "subnets in zones that offer an instance type of every Neuron pool, trn1 (trn1.32xlarge): "
        f"{subnets[1]} is in us-west-2a, which does not; the zones that do: us-west-2b, us-west-2c, us-west-2d")
    assert constructed_resources == ["pulumi:pulumi:Stack"]


def test_listed_zones_are_kept_and_held_to_the_same_rule():
    kept = run_program("dev", {NETWORK: {"zones": ["us-west-2d", "us-west-2b"]}})
    assert private_zones(kept) == ["us-west-2b", "us-west-2d"]
    assert kept.outputs["availabilityZones"] == ["us-west-2d", "us-west-2b"]
    assert "us-west-2a" not in mock_offered_zones("us-west-2", "trn1.32xlarge")
    with pytest.raises(ConfigError) as raised:
        run_program("dev", {NETWORK: {"zones": ["us-west-2a", "us-west-2b"]}})
    assert str(raised.value) == (
        'config flux-neuron:network.zones: ["us-west-2a", "us-west-2b"] is not allowed: zones of the region that '
        "offer an instance type of every Neuron pool, trn1 (trn1.32xlarge): us-west-2a is not one of them; the "
        "zones that are: us-west-2b, us-west-2c, us-west-2d")
    # A zone of another region is refused by the config, before EC2 is asked.
    with pytest.raises(ConfigError, match=r"network.zones\[0\]: 'us-east-1a' is not allowed: an availability zone of "
                                          r"us-west-2"):
        run_program("dev", {NETWORK: {"zones": ["us-east-1a", "us-west-2b"]}})
    # One the list has but this account's EC2 does not: refused from EC2's answer.
    with pytest.raises(ConfigError, match=r"us-west-2d is not a zone of the region"):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(offline, "mock_zones", lambda region: ["us-west-2a", "us-west-2b", "us-west-2c"])
            run_program("dev", {NETWORK: {"zones": ["us-west-2d", "us-west-2b"]}})


def test_the_zones_are_a_stack_output(rendering):
    assert sorted(rendering.outputs["availabilityZones"]) == private_zones(rendering)


def test_the_offline_run_answers_with_the_regions_real_zones_only():
    """The zones the mocks hand the program are the committed real ones (infra/regions.py), and every zone they
    say offers a Neuron family is one of them: a plan never shows a zone the region does not have."""
    from infra import regions

    for region, families in offline.MOCK_OFFERED_LETTERS.items():
        assert mock_zones(region) == list(regions.zones(region))
        for family in families:
            assert set(mock_offered_zones(region, f"{family}.32xlarge")) <= set(regions.zones(region)), family
    for stack in ("dev", "prod"):
        rendering = run_program(stack)
        assert set(rendering.outputs["availabilityZones"]) <= set(regions.zones(rendering.outputs["region"]))
