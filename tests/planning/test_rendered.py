"""Everything the program renders passes the checks a real API server and IAM would apply."""

import copy
import json

import pytest

from planning.checks.iam import JUSTIFIED_IAM_FINDINGS, POLICY_INPUTS, iam_policy_problems
from planning.checks.karpenter import karpenter_schema_problems
from planning.checks.kubernetes import kubernetes_schema_problems
from planning.checks import cloudwatch_agent
from planning.checks.objects import is_cloudwatch_agent, is_karpenter
from planning.offline import manifest


def objects(rendering):
    return [manifest(resource) for resource in rendering.kubernetes_objects()]


def test_core_objects_match_the_kubernetes_schemas_of_the_cluster_minor(rendering, stack_config):
    core = [obj for obj in objects(rendering) if not is_karpenter(obj) and not is_cloudwatch_agent(obj)]
    assert {obj["kind"] for obj in core} >= {"Namespace", "PersistentVolume", "PersistentVolumeClaim"}
    problems = [p for obj in core for p in kubernetes_schema_problems(obj, stack_config.kubernetes_version)]
    assert problems == []


def test_the_cloudwatch_agent_matches_the_pinned_add_on_s_crd(rendering):
    agents = [obj for obj in objects(rendering) if is_cloudwatch_agent(obj)]
    assert [obj["kind"] for obj in agents] == ["AmazonCloudWatchAgent"]
    assert cloudwatch_agent.problems(agents) == []
    # The check sees a spec the CRD refuses.
    broken = {**agents[0], "spec": {**agents[0]["spec"], "hostNetwork": "no"}}
    (problem,) = cloudwatch_agent.problems([broken])
    assert "'no' is not of type 'boolean' at spec/hostNetwork" in problem.message


def test_karpenter_objects_match_the_pinned_crds(rendering):
    karpenter = [obj for obj in objects(rendering) if is_karpenter(obj)]
    assert {obj["kind"] for obj in karpenter} == {"EC2NodeClass", "NodePool"}
    assert [p for obj in karpenter for p in karpenter_schema_problems(obj)] == []


def test_the_schema_checks_reject_what_an_api_server_would(rendering, stack_config):
    node_pool = next(obj for obj in objects(rendering) if obj["kind"] == "NodePool")
    broken_pool = copy.deepcopy(node_pool)
    broken_pool["spec"]["disruption"]["consolidationPolicy"] = "Sometimes"
    assert "Sometimes" in " ".join(karpenter_schema_problems(broken_pool))
    node_class = next(obj for obj in objects(rendering) if obj["kind"] == "EC2NodeClass")
    broken_class = copy.deepcopy(node_class)
    broken_class["spec"]["metadataOptions"]["httpTokens"] = "sometimes"
    assert karpenter_schema_problems(broken_class) != []
    volume = next(obj for obj in objects(rendering) if obj["kind"] == "PersistentVolume")
    broken_volume = copy.deepcopy(volume)
    broken_volume["spec"]["accessMode"] = broken_volume["spec"].pop("accessModes")
    assert "accessMode" in " ".join(kubernetes_schema_problems(broken_volume, stack_config.kubernetes_version))


def policies(rendering):
    for type_, key in POLICY_INPUTS.items():
        for resource in rendering.of_type(type_):
            yield resource.name, resource.inputs[key]


def test_every_policy_document_lints_clean_with_parliament(rendering):
    found = dict(policies(rendering))
    assert {"karpenter-controller-inline", "graphs-csi-inline", "graphs", "karpenter"} <= set(found)
    problems = {name: iam_policy_problems(policy) for name, policy in found.items()}
    assert {name: p for name, p in problems.items() if p} == {}


def test_justified_findings_name_statements_that_exist(rendering):
    """A justification outlives nothing: each names a statement the program still writes."""
    sids = {statement.get("Sid") for _, policy in policies(rendering)
            for statement in json.loads(policy)["Statement"]}
    assert {sid for sid, _ in JUSTIFIED_IAM_FINDINGS} <= sids


@pytest.mark.parametrize("statement, issue", [
    ({"Effect": "Allow", "Action": "s3:GetObjekt", "Resource": "*"}, "UNKNOWN_ACTION"),
    ({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::bucket"}, "RESOURCE_MISMATCH"),
])
def test_the_iam_lint_reports_real_mistakes(statement, issue):
    problems = iam_policy_problems({"Version": "2012-10-17", "Statement": [statement]})
    assert any(issue in problem for problem in problems)
