"""Teardown and naming (issue 13, item 8): stack names that every AWS name they feed accepts, and
`scripts/destroy`, run here against stand-ins for pulumi, kubectl and aws that record each call."""

import contextvars
import os
import re
import stat
import subprocess

import pytest

from planning import offline
from infra.monitoring import PROMETHEUS_SERVICE
from infra.config import STACK_NAME_LIMITS, StackNameError, validate_project_name, validate_stack_name
from infra.naming import (
    IMAGE_CACHE_TAG, METRICS_NAMESPACE, PROJECT, NODEPOOL_LABEL, WORKLOAD_NAMESPACE, graphs_bucket_prefix,
    stack_resource_name, workload_labels,
)
from planning.offline import REPO_ROOT, stack_file_config, stack_names

SCRIPTS = sorted((REPO_ROOT / "scripts").iterdir())
DESTROY = REPO_ROOT / "scripts" / "destroy"
BUCKET = "flux-neuron-dev-graphs-20261201abcdef"


def test_names_are_the_projects_own_the_one_in_pulumi_yaml():
    pulumi_yaml = (REPO_ROOT / "Pulumi.yaml").read_text()
    assert re.search(rf"^name: {re.escape(PROJECT)}$", pulumi_yaml, re.M)
    validate_project_name(PROJECT)
    with pytest.raises(StackNameError) as raised:
        validate_project_name("flux-neuron-team-b")
    assert str(raised.value).startswith(
        "Pulumi project 'flux-neuron-team-b' is not allowed: this program names its AWS resources "
        "flux-neuron-<stack> and reads config keys flux-neuron:<key>")


@pytest.mark.parametrize("stack", stack_names())
def test_the_real_stack_names_are_valid(stack):
    validate_stack_name(stack)


def test_the_longest_allowed_name_fills_the_tightest_limit_exactly():
    longest = "a" * 17
    validate_stack_name(longest)
    assert len(graphs_bucket_prefix(longest)) == 37
    for _, name, limit in STACK_NAME_LIMITS:
        assert len(name(longest)) <= limit


@pytest.mark.parametrize("stack", ["a" * 18, "dev_1", "Dev", "dev.eu", "dev--eu", "-dev"])
def test_a_stack_name_some_aws_name_would_reject_is_refused_in_one_line(stack):
    with pytest.raises(StackNameError) as raised:
        validate_stack_name(stack)
    message = str(raised.value)
    assert message == (f"stack name {stack!r} is not allowed: lowercase letters and digits, words joined by "
                       "single hyphens, at most 17 characters (the graph bucket's prefix "
                       "'flux-neuron-<stack>-graphs-' is limited to 37)")


def test_the_program_stops_on_a_bad_stack_name_before_any_resource(constructed_resources):
    raw, secret_keys = stack_file_config("dev")
    with pytest.raises(StackNameError, match=r"^stack name 'dev-in-eu-west-1-team-a' is not allowed: "):
        contextvars.Context().run(offline._run_isolated, "dev-in-eu-west-1-team-a", raw, secret_keys)
    assert constructed_resources == ["pulumi:pulumi:Stack"]


def test_the_validated_names_are_the_ones_the_program_gives(rendering, stack):
    cluster = rendering.one("eks:index:Cluster", "cluster").inputs["name"]
    assert cluster == stack_resource_name(stack) == rendering.outputs["clusterName"]
    assert rendering.one("aws:sqs/queue:Queue", "karpenter").inputs["name"] == cluster
    assert rendering.one("aws:ecr/repository:Repository", "image").inputs["name"] == stack_resource_name(stack)
    assert rendering.one("aws:s3/bucket:Bucket", "graphs").inputs["bucketPrefix"] == graphs_bucket_prefix(stack)


def test_the_scripts_are_shellcheck_clean():
    result = subprocess.run(["shellcheck", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_destroy_names_the_labels_and_namespace_the_program_uses():
    text = DESTROY.read_text()
    assert re.search(r'^workloads="(.*)"$', text, re.M)[1] == \
        f"app.kubernetes.io/part-of={workload_labels('serve', 'x')['app.kubernetes.io/part-of']}"
    assert re.search(r'^karpenter_nodes="(.*)"$', text, re.M)[1] == NODEPOOL_LABEL
    assert re.search(r'^namespace="(.*)"$', text, re.M)[1] == WORKLOAD_NAMESPACE
    assert re.search(r'^monitoring_namespace="(.*)"$', text, re.M)[1] == METRICS_NAMESPACE
    assert re.search(r'^prometheus="(.*)"$', text, re.M)[1] == PROMETHEUS_SERVICE
    assert re.search(r'^image_cache_tag="(.*)"$', text, re.M)[1] == IMAGE_CACHE_TAG
    assert re.search(r'^stack_resources="(.*)"$', text, re.M)[1] == stack_resource_name("${stack}")


# Stand-ins: each records its arguments, one line per call, and answers what destroy asks.
FAKE_PULUMI = f"""
case "$*" in
  "stack output clusterName "*) echo flux-neuron-dev ;;
  "stack output graphsBucket "*) echo {BUCKET} ;;
  "stack output kubeconfig "*) echo '{{"apiVersion": "v1", "kind": "Config"}}' ;;
  "config get aws:region "*) echo us-west-2 ;;
  "stack output imageRepository "*) echo flux-neuron-dev ;;
  "config get --path graphCache.retainOnDestroy "*) [ -n "$RETAIN" ] && echo "$RETAIN" || exit 255 ;;
  "config get --path image.retainOnDestroy "*) [ -n "$RETAIN_IMAGE" ] && echo "$RETAIN_IMAGE" || exit 255 ;;
  "config get --path image.repository "*) [ -n "$ADOPTED_REPOSITORY" ] && echo "$ADOPTED_REPOSITORY" || exit 255 ;;
  "config get --path coldStart.retainSnapshotsOnDestroy "*)
    [ -n "$RETAIN_SNAPSHOTS" ] && echo "$RETAIN_SNAPSHOTS" || exit 255 ;;
  "config get --path graphCache."*) exit 255 ;;
esac
"""
FAKE_KUBECTL = """
case "$*" in
  "-n monitoring get deployment prometheus-server "*) [ -z "$PROMETHEUS_VOLUME" ] || echo deployment.apps/prometheus-server ;;
  "-n monitoring get pvc prometheus-server "*) printf '%s' "$PROMETHEUS_VOLUME" ;;
esac
"""
FAKE_AWS = """
case "$*" in
  "eks describe-cluster "*) [ -z "$CLUSTER_GONE" ] || exit 254 ;;
  *"describe-log-groups"*"/aws/eks/"*) printf '/aws/eks/flux-neuron-dev/cluster\\n' ;;
  *"describe-log-groups"*"/aws/containerinsights/"*)
    printf '%s\\t%s\\n' /aws/containerinsights/flux-neuron-dev/application \\
      /aws/containerinsights/flux-neuron-dev/performance ;;
  "ec2 describe-snapshots "*"Name=tag:flux-neuron.io/image-cache,Values=flux-neuron-dev "*)
    printf 'snap-0123456789abcdef0\\tsnap-0fedcba9876543210\\n' ;;
esac
"""


def run_destroy(tmp_path, retain="", cluster_gone="", retain_image="", adopted_repository="", prometheus_volume="",
                retain_snapshots=""):
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    for tool, answers in (("pulumi", FAKE_PULUMI), ("kubectl", FAKE_KUBECTL), ("aws", FAKE_AWS)):
        fake = bin_dir / tool
        fake.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n{answers}')
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PULUMI_CONFIG_PASSPHRASE": "x",
           "RETAIN": retain, "CLUSTER_GONE": cluster_gone, "RETAIN_IMAGE": retain_image,
           "ADOPTED_REPOSITORY": adopted_repository, "PROMETHEUS_VOLUME": prometheus_volume,
           "RETAIN_SNAPSHOTS": retain_snapshots}
    result = subprocess.run([str(DESTROY), "dev", "--yes"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [line for line in log.read_text().splitlines()
            if not line.startswith(("pulumi stack output", "pulumi config get", "aws eks describe-cluster"))]


def test_destroy_drains_the_cluster_before_pulumi_destroy_then_removes_the_log_groups(tmp_path):
    calls = run_destroy(tmp_path)
    assert calls[:4] == [
        "kubectl -n flux delete hpa,deployments,jobs -l app.kubernetes.io/part-of=flux-neuron "
        "--cascade=foreground --wait=true --ignore-not-found",
        "kubectl delete nodepools.karpenter.sh --all --wait=true --ignore-not-found",
        "kubectl get nodes -l karpenter.sh/nodepool -o name",
        "kubectl -n flux delete ingress --all --wait=true --ignore-not-found",
    ]
    # Prometheus's volume claim while the EBS CSI driver can still delete its volume; the stand-in
    # kubectl knows no Deployment or volume, so there is nothing to scale down or wait for.
    assert calls[4:7] == [
        "kubectl -n monitoring get deployment prometheus-server -o name --ignore-not-found",
        "kubectl -n monitoring get pvc prometheus-server -o jsonpath={.spec.volumeName} --ignore-not-found",
        "kubectl -n monitoring delete pvc prometheus-server --wait=true --timeout=300s --ignore-not-found",
    ]
    assert calls[7] == "pulumi destroy --stack dev --yes"
    assert calls[8] == f"pulumi config set --path graphCache.bucket {BUCKET} --stack dev"
    assert calls[9] == "pulumi config set --path image.repository flux-neuron-dev --stack dev"
    deleted = [call.rsplit(" ", 1)[1] for call in calls if "delete-log-group " in call]
    assert deleted == ["/aws/eks/flux-neuron-dev/cluster", "/aws/containerinsights/flux-neuron-dev/application",
                       "/aws/containerinsights/flux-neuron-dev/performance"]


def test_destroy_deletes_the_stacks_image_cache_snapshots_last(tmp_path):
    calls = run_destroy(tmp_path)
    assert calls[-3:] == [
        "aws ec2 describe-snapshots --region us-west-2 --owner-ids self "
        "--filters Name=tag:flux-neuron.io/image-cache,Values=flux-neuron-dev "
        "--query Snapshots[].SnapshotId --output text",
        "aws ec2 delete-snapshot --region us-west-2 --snapshot-id snap-0123456789abcdef0",
        "aws ec2 delete-snapshot --region us-west-2 --snapshot-id snap-0fedcba9876543210",
    ]
    assert calls.index("pulumi destroy --stack dev --yes") < len(calls) - 3


def test_destroy_keeps_the_snapshots_when_the_stack_retains_them(tmp_path):
    calls = run_destroy(tmp_path, retain_snapshots="true")
    assert not any(call.startswith("aws ec2 ") for call in calls)


def test_destroy_stops_prometheus_and_waits_for_its_volume_to_be_deleted(tmp_path):
    calls = run_destroy(tmp_path, prometheus_volume="pvc-0123")
    start = calls.index("kubectl -n monitoring get deployment prometheus-server -o name --ignore-not-found")
    assert calls[start + 1:start + 5] == [
        "kubectl -n monitoring scale deployment prometheus-server --replicas=0",
        "kubectl -n monitoring get pvc prometheus-server -o jsonpath={.spec.volumeName} --ignore-not-found",
        "kubectl -n monitoring delete pvc prometheus-server --wait=true --timeout=300s --ignore-not-found",
        "kubectl wait --for=delete pv/pvc-0123 --timeout=300s",
    ]
    assert calls.index("pulumi destroy --stack dev --yes") == start + 5


def test_destroy_forgets_the_cache_and_the_repository_when_they_are_not_retained(tmp_path):
    calls = run_destroy(tmp_path, retain="false", retain_image="false")
    assert "pulumi destroy --stack dev --yes" in calls
    assert not any(call.startswith("pulumi config set") for call in calls)


def test_destroy_leaves_a_repository_already_named_in_config_as_it_is(tmp_path):
    calls = run_destroy(tmp_path, adopted_repository="flux-neuron-prod")
    assert not any(call.startswith("pulumi config set --path image.") for call in calls)


def test_destroy_after_the_cluster_is_gone_skips_straight_to_pulumi_destroy(tmp_path):
    calls = run_destroy(tmp_path, cluster_gone="yes")
    assert not any(call.startswith("kubectl") for call in calls)
    assert calls[0] == "pulumi destroy --stack dev --yes"


# The image repository survives destroy like the graph cache (infra/image.py).
ECR = ("aws:ecr/repository:Repository", "aws:ecr/lifecyclePolicy:LifecyclePolicy")
IMAGE = "flux-neuron:image"


def ecr_resources(rendering):
    return [resource for resource in rendering.resources if resource.type in ECR]


def test_destroy_keeps_the_image_repository_with_its_lifecycle_policy(rendering, stack):
    assert [resource.type for resource in ecr_resources(rendering)] == list(ECR)
    assert all(resource.retain_on_delete for resource in ecr_resources(rendering))
    assert rendering.one(ECR[0], "image").inputs["forceDelete"] is False
    assert rendering.outputs["imageRepository"] == stack_resource_name(stack)


def test_without_retention_destroy_deletes_the_repository_with_its_images():
    rendering = offline.run_program("dev", {IMAGE: {"retainOnDestroy": False}})
    assert not any(resource.retain_on_delete for resource in ecr_resources(rendering))
    assert rendering.one(ECR[0], "image").inputs["forceDelete"] is True


def test_a_kept_repository_is_pushed_to_and_never_created_again():
    rendering = offline.run_program("dev", {IMAGE: {"repository": "flux-neuron-dev"}})
    assert ecr_resources(rendering) == []
    url = f"{offline.ACCOUNT_ID}.dkr.ecr.us-west-2.amazonaws.com/flux-neuron-dev"
    build = rendering.one("docker-build:index:Image", "image").inputs
    assert build["tags"][0].startswith(f"{url}:") and build["registries"][0]["address"] == url
    assert rendering.outputs["image"].startswith(f"{url}@sha256:")
    assert rendering.outputs["imageRepository"] == "flux-neuron-dev"


def test_a_prebuilt_image_has_no_repository_to_keep():
    uri = f"{offline.ACCOUNT_ID}.dkr.ecr.us-west-2.amazonaws.com/flux@sha256:{'0' * 64}"
    rendering = offline.run_program("dev", {IMAGE: {"uri": uri}})
    assert ecr_resources(rendering) == [] and "imageRepository" not in rendering.outputs
