"""The controller policies against the official ones (planning/data/official/): equal, except the
differences each component lists with its reason, and resources narrowed, never widened."""

import pytest
import yaml

from infra import ingress, karpenter
from infra.iam import ADDED, CONDITIONS, OMITTED, RESOURCES, Difference
from planning import official_iam
from planning.official_iam import Found

PARTITION, REGION, ACCOUNT, CLUSTER, VPC = "aws", "us-west-2", "123456789012", "flux-dev", "vpc-0a1b2c3d"
NODE_ROLE = f"arn:aws:iam::{ACCOUNT}:role/karpenter-node"
QUEUE = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{CLUSTER}"
CLOUDFORMATION_VALUES = {"AWS::Partition": PARTITION, "AWS::Region": REGION, "AWS::AccountId": ACCOUNT,
                         "ClusterName": CLUSTER, "KarpenterNodeRole.Arn": NODE_ROLE,
                         "KarpenterInterruptionQueue.Arn": QUEUE}


def _karpenter():
    return karpenter.controller_policy(CLUSTER, REGION, ACCOUNT, QUEUE, NODE_ROLE)


def _load_balancer_controller():
    return ingress.controller_policy(CLUSTER, REGION, ACCOUNT, VPC)


CASES = {
    "karpenter": (_karpenter, lambda: official_iam.karpenter_controller_policy(CLOUDFORMATION_VALUES),
                  karpenter.OFFICIAL_POLICY_DIFFERENCES),
    "load-balancer-controller": (_load_balancer_controller, official_iam.load_balancer_controller_policy,
                                 ingress.OFFICIAL_POLICY_DIFFERENCES),
}


@pytest.mark.parametrize("name", CASES)
def test_the_policy_equals_the_official_one_but_for_the_listed_differences(name):
    ours, official, deliberate = CASES[name]
    found = official_iam.policy_differences(ours(), official())
    assert [str(difference) for difference in official_iam.unexplained(found, deliberate)] == []
    assert official_iam.stale(found, deliberate) == []
    assert all(difference.reason for difference in deliberate)


def test_karpenter_matches_statement_by_statement():
    """Karpenter's official statements have Sids: each of ours has the same actions and conditions."""
    def by_sid(policy):
        return {s["Sid"]: (sorted(official_iam.as_list(s["Action"])), official_iam.canonical_conditions(s))
                for s in policy["Statement"]}
    assert by_sid(_karpenter()) == by_sid(official_iam.karpenter_controller_policy(CLOUDFORMATION_VALUES))


def test_the_cloudformation_loader_reads_intrinsic_tags():
    template = yaml.load("a: !Sub 'x-${ClusterName}'\nb: !Ref Queue\nc: !GetAtt Queue.Arn\nd: !Join [',', [x, y]]",
                         Loader=official_iam.CloudFormationLoader)
    assert template == {"a": {"Fn::Sub": "x-${ClusterName}"}, "b": {"Ref": "Queue"},
                        "c": {"Fn::GetAtt": ["Queue", "Arn"]}, "d": {"Fn::Join": [",", ["x", "y"]]}}
    assert official_iam.substitute("x-${ClusterName}", CLOUDFORMATION_VALUES) == f"x-{CLUSTER}"
    with pytest.raises(KeyError, match=r"no value for \$\{AWS::StackName\}"):
        official_iam.substitute("${AWS::StackName}", CLOUDFORMATION_VALUES)


def test_the_official_karpenter_policy_is_every_managed_policy_of_the_template():
    sids = {statement["Sid"] for statement in
            official_iam.karpenter_controller_policy(CLOUDFORMATION_VALUES)["Statement"]}
    assert {"AllowRegionalReadActions", "AllowScopedInstanceProfileTagActions", "AllowZonalShiftStatusReadOnly",
            "AllowInterruptionQueueActions", "AllowAPIServerEndpointDiscovery", "AllowPassingInstanceRole"} <= sids


def _statement(policy, sid):
    return next(statement for statement in policy["Statement"] if statement.get("Sid") == sid)


def _karpenter_differences(seed):
    policy = _karpenter()
    seed(policy)
    found = official_iam.policy_differences(
        policy, official_iam.karpenter_controller_policy(CLOUDFORMATION_VALUES))
    return [(difference.kind, difference.action) for difference in found]


def test_a_missing_action_is_a_difference():
    def drop_instance_status(policy):
        _statement(policy, "AllowRegionalReadActions")["Action"].remove("ec2:DescribeInstanceStatus")
    assert _karpenter_differences(drop_instance_status) == [(OMITTED, "ec2:DescribeInstanceStatus")]


def test_an_extra_action_is_a_difference():
    def add_availability_zones(policy):
        _statement(policy, "AllowRegionalReadActions")["Action"].append("ec2:DescribeAvailabilityZones")
    assert _karpenter_differences(add_availability_zones) == [(ADDED, "ec2:DescribeAvailabilityZones")]


def test_a_missing_condition_is_a_difference():
    def tag_any_instance_profile(policy):
        del _statement(policy, "AllowScopedInstanceProfileTagActions")["Condition"]
    assert _karpenter_differences(tag_any_instance_profile) == [(CONDITIONS, "iam:TagInstanceProfile")]


def test_a_wider_resource_is_a_difference_no_list_can_excuse():
    policy = _load_balancer_controller()
    _statement(policy, "TagListenersAndRules")["Resource"].append(
        f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:loadbalancer/app/*/*")
    found = official_iam.policy_differences(policy, official_iam.load_balancer_controller_policy())
    excuse = (*ingress.OFFICIAL_POLICY_DIFFERENCES,
              Difference(RESOURCES, ("elasticloadbalancing:AddTags",), "tried"))
    widened = official_iam.unexplained(found, excuse)
    assert [(d.kind, d.action) for d in widened] == [(RESOURCES, "elasticloadbalancing:AddTags"),
                                                     (RESOURCES, "elasticloadbalancing:RemoveTags")]
    assert "loadbalancer/app/*/*' is outside the official [" in widened[0].detail


def test_a_listed_difference_that_no_longer_exists_is_stale():
    deliberate = (Difference(OMITTED, ("ec2:DescribeInstanceStatus",), "reason"),)
    assert official_iam.stale([], deliberate) == [(OMITTED, "ec2:DescribeInstanceStatus")]
    assert official_iam.stale([Found("ec2:DescribeInstanceStatus", OMITTED, "")], deliberate) == []
