"""Quotas before `up` (issue 13, item 4): the vCPUs a stack's Neuron NodePools may hold at their limits,
per EC2 quota (planning/quotas.py), and scripts/deploy comparing them with the account's quotas. AWS
and Pulumi are stand-ins here: fake `aws` and `pulumi` executables on PATH that record each call and
answer what the script asks."""

import json
import os
import stat
import subprocess
import sys

import pytest

from infra import catalog
from infra.config import NeuronPool, load_stack_config
from planning.offline import REPO_ROOT, stack_file_config, with_overrides
from planning.quotas import QUOTAS, lines, needed_vcpus, vcpus_at_limit

DEPLOY = REPO_ROOT / "scripts" / "deploy"
TRN_ON_DEMAND, TRN_SPOT = QUOTAS[("Trn", "on-demand")], QUOTAS[("Trn", "spot")]
STANDARD = QUOTAS[("Standard", "on-demand")]
# dev's cpu NodePool: the weights Job and 3 graphs Jobs on m7i.4xlarge (16 vCPUs) and the m7i.large platform node
# (2), twice over (infra/karpenter.py, CPU_NODEPOOL_HEADROOM).
DEV_CPU_POOL = 2 * (4 * 16 + 2)


def pool(family, types, max_devices, capacity_types=("on-demand",)):
    return NeuronPool(family, types, capacity_types, max_devices)


@pytest.mark.parametrize(("neuron_pool", "vcpus"), [
    # 5 trn1.32xlarge (16 devices, 128 vCPUs each).
    (pool("trn1", ("trn1.32xlarge",), 80), 5 * 128),
    # Both inf2 sizes hold 16 vCPUs per device: 8 x 12 devices.
    (pool("inf2", ("inf2.24xlarge", "inf2.48xlarge"), 96), 8 * 192),
    # 10 devices: one inf2.24xlarge (6); an inf2.48xlarge (12) would pass the limit, so it never launches.
    (pool("inf2", ("inf2.24xlarge", "inf2.48xlarge"), 10), 96),
    # The most vCPUs per device wins: inf2.8xlarge has 32 for its one device, inf2.xlarge 4.
    (pool("inf2", ("inf2.xlarge", "inf2.8xlarge"), 3), 3 * 32),
    # One trn1.32xlarge and the remaining 4 devices as trn1.2xlarge.
    (pool("trn1", ("trn1.2xlarge", "trn1.32xlarge"), 20), 128 + 4 * 8),
])
def test_a_pool_at_its_limit_holds_the_most_vcpus_its_types_pack_into_its_devices(neuron_pool, vcpus):
    assert vcpus_at_limit(neuron_pool) == vcpus


def test_a_pool_allowed_spot_and_on_demand_may_need_all_of_it_in_either_and_one_class_adds_up():
    dev = stack_file_config("dev")[0]
    config = load_stack_config(with_overrides(dev, {"flux-neuron:neuronPools": {
        "trn1": {"instanceTypes": ["trn1.32xlarge"], "capacityTypes": ["on-demand", "spot"], "maxDevices": 80},
        "trn2": {"instanceTypes": ["trn2.48xlarge"], "maxDevices": 32}},
        # What a pool with Spot allows (a serving pod's grace within the Spot notice).
        "flux-neuron:serving": {**json.loads(dev["flux-neuron:serving"]), "requestTimeoutSeconds": 75}}))
    trn2 = 2 * catalog.instance("trn2.48xlarge").vcpus
    assert needed_vcpus(config) == {TRN_ON_DEMAND: 640 + trn2, TRN_SPOT: 640, STANDARD: DEV_CPU_POOL}


def test_reserved_capacity_counts_against_the_on_demand_quota_once():
    dev = stack_file_config("dev")[0]
    config = load_stack_config(with_overrides(dev, {"flux-neuron:neuronPools": {
        "trn1": {"instanceTypes": ["trn1.32xlarge"], "capacityTypes": ["reserved", "on-demand"],
                 "capacityReservationIds": ["cr-0123456789abcdef0"], "maxDevices": 80}}}))
    assert needed_vcpus(config) == {TRN_ON_DEMAND: 640, STANDARD: DEV_CPU_POOL}


def test_the_command_prints_region_code_vcpus_and_name_per_quota():
    standard = "L-1216C47A\t132\tRunning On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances"
    assert lines("dev") == ["us-west-2\tL-2C3B7624\t384\tRunning On-Demand Trn instances", f"us-west-2\t{standard}"]
    assert lines("prod") == ["us-east-1\tL-1945791B\t1536\tRunning On-Demand Inf instances", f"us-east-1\t{standard}"]


def test_the_command_runs_as_the_deploy_script_calls_it():
    result = subprocess.run([sys.executable, "-m", "planning.quotas", "--stack", "dev"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == lines("dev")


FAKE_PULUMI = """
case "$*" in
  "config get hfToken "*) exit 0 ;;
esac
"""
FAKE_AWS = """
case "$*" in
  "service-quotas get-service-quota "*) echo "$QUOTA" ;;
esac
"""


def run_deploy(tmp_path, *args, quota="1000.0", with_aws=True):
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    log.touch()
    for tool, answers in (("pulumi", FAKE_PULUMI), ("aws", FAKE_AWS)):
        if tool == "aws" and not with_aws:
            continue
        fake = bin_dir / tool
        fake.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n{answers}')
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    # Only the stand-ins and the system's tools: no real aws CLI.
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "PULUMI_CONFIG_PASSPHRASE": "x",
           "QUOTA": quota, "PYTHON": sys.executable}
    result = subprocess.run([str(DEPLOY), "dev", *args], env=env, capture_output=True, text=True, timeout=60)
    return result, log.read_text().splitlines()


def test_deploy_with_enough_quota_runs_pulumi_up(tmp_path):
    result, calls = run_deploy(tmp_path, "--yes")
    assert result.returncode == 0, result.stderr
    assert calls[0] == ("aws service-quotas get-service-quota --region us-west-2 --service-code ec2 "
                        "--quota-code L-2C3B7624 --query Quota.Value --output text")
    assert calls[-1] == "pulumi up --stack dev --yes"
    assert "quota L-2C3B7624 (Running On-Demand Trn instances) in us-west-2: 1000.0 vCPUs" in result.stdout


def test_deploy_below_the_quota_says_what_to_request_and_stops_before_pulumi(tmp_path):
    result, calls = run_deploy(tmp_path, quota="256.0")
    assert result.returncode == 1
    assert ("quota L-2C3B7624 (Running On-Demand Trn instances) in us-west-2 is 256.0 vCPUs; the stack's "
            "NodePools may use 384") in result.stderr
    assert ("aws service-quotas request-service-quota-increase --region us-west-2 --service-code ec2 "
            "--quota-code L-2C3B7624 --desired-value 384") in result.stderr
    assert "https://us-west-2.console.aws.amazon.com/servicequotas/home/services/ec2/quotas/L-2C3B7624" in result.stderr
    assert not any(call.startswith("pulumi") for call in calls)


@pytest.mark.parametrize("args", [(), ("--skip-quota-check",)])
def test_deploy_without_the_aws_cli_stops_and_says_so(tmp_path, args):
    """The quota check needs it, and so does `pulumi up`: the cluster's kubeconfig runs `aws eks get-token`."""
    result, calls = run_deploy(tmp_path, *args, with_aws=False)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "aws is not installed (the kubeconfig runs aws eks get-token): get the AWS CLI v2, "
        "https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html"]
    assert calls == []


def test_deploy_with_skip_quota_check_asks_no_quota_and_passes_the_rest_to_pulumi_up(tmp_path):
    result, calls = run_deploy(tmp_path, "--skip-quota-check", "--yes", quota="0.0")
    assert result.returncode == 0, result.stderr
    assert calls[-1] == "pulumi up --stack dev --yes"
    assert not any(call.startswith("aws") for call in calls)
