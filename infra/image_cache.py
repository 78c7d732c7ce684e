"""The image cache: the one image every Neuron pod runs, pulled in AWS into an EBS snapshot that new Neuron
nodes restore as containerd's root (infra/karpenter.py), so a pod on a new node finds its image there
instead of pulling 15-20 GB (docs/cold-start.md).

How it is built: an SSM Automation runbook (this stack's document) launches a builder instance from the
nodes' own AMI, formats a cache volume, copies the AMI's containerd state onto it (the pause image the
sandbox uses), pulls the image by digest into it, snapshots it, terminates the builder and deletes the
stack's older cache snapshots but the newest KEEP_SNAPSHOTS. A State Manager association runs the runbook
once when it is created; its parameters are the cache key (the image digest, the AMI release and the build
script), so Pulumi replaces it, and the runbook runs, exactly when the key changes. The runbook looks for
a completed snapshot of its key first and builds nothing if there is one (a snapshot kept by an earlier
destroy, or a re-created association). Pulumi then looks the snapshot up by its tags.

Nothing here is on the deploying machine but the lookups: the build runs in the stack's VPC, with a role
that may launch, snapshot and terminate only what carries the stack's cache tag."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra import iam, versions
from infra.config import ColdStartSettings
from infra.naming import IMAGE_CACHE_KEY_TAG, IMAGE_CACHE_TAG, stack_resource_name

# The filesystem label nodes mount the cache by: the device's name on a Nitro instance is an NVMe name the
# mapping's /dev/xvdb only becomes through udev, a label is on the volume itself.
CACHE_LABEL = "flux-image-cache"
CACHE_DEVICE = "/dev/xvdb"
# The image unpacked (15-20 GB) plus its compressed layers, which containerd keeps too, plus the changed layers
# of a newer digest pulled on top while the snapshot is stale. At most 102 GiB so that fast snapshot restore
# gives the snapshot the largest credit bucket: 10 volumes per zone at once, 10 more an hour (EBS user guide,
# "Fast snapshot restore volume creation credits": MIN(10, 1024 / snapshot size in GiB)).
CACHE_VOLUME_GIB = 100
CACHE_VOLUME = {"volumeType": "gp3", "iops": 6000, "throughput": 500}
# The builder only pulls and writes: network and a few cores to decompress the layers.
BUILDER_INSTANCE_TYPE = "m7i.2xlarge"
# Launch, the pull (about 6 minutes at the budget's rate) and the first, full snapshot of the volume (EBS
# copies every written block to S3: tens of minutes for 30-40 GB is common). Past this the association,
# and so `pulumi up`, fails; the runbook still terminates its builder.
BUILD_TIMEOUT_SECONDS = 3600
# The snapshot the node class names now and the one it named before: nodes launched from the old launch
# template in the minute Karpenter takes to follow the new one still find theirs.
KEEP_SNAPSHOTS = 2
RUN_SHELL_SCRIPT = "AWS-RunShellScript"
EKS_AMI_PARAMETERS = "/aws/service/eks/optimized-ami"

# Run as root on the builder by SSM Run Command; {{ ImageRef }} is the runbook's parameter, a digest reference.
BUILD_SCRIPT = f"""#!/usr/bin/env bash
# The image, pulled into a fresh filesystem on the cache volume that Neuron nodes mount as containerd's root.
set -euo pipefail
image='{{{{ ImageRef }}}}'
udevadm settle
mkfs.xfs -f -L {CACHE_LABEL} {CACHE_DEVICE}
# The AMI's containerd state first: nodeadm points the pod sandbox at the pause image the AMI build pulled
# into it, and a node whose root this volume becomes finds nothing else.
mkdir -p /mnt/{CACHE_LABEL}
mount {CACHE_DEVICE} /mnt/{CACHE_LABEL}
cp -a /var/lib/containerd/. /mnt/{CACHE_LABEL}/
umount /mnt/{CACHE_LABEL}
mount {CACHE_DEVICE} /var/lib/containerd
systemctl start containerd
registry="${{image%%/*}}"
credentials=()
case "${{registry}}" in
  *.dkr.ecr.*.amazonaws.com)
    credentials=(--user "AWS:$(aws ecr get-login-password --region "$(cut -d. -f4 <<< "${{registry}}")")") ;;
esac
# Labelled as the kubelet's own pulls are, and pinned: the kubelet's image garbage collection leaves it.
ctr --namespace k8s.io images pull --platform linux/amd64 --label io.cri-containerd.image=managed \\
  --label io.cri-containerd.pinned=pinned "${{credentials[@]}}" "${{image}}"
ctr --namespace k8s.io images ls --quiet | grep --fixed-strings --line-regexp "${{image}}"
systemctl stop containerd
sync
umount /var/lib/containerd
"""

# A cloud-init script in the nodes' user data: it runs before nodeadm-run starts containerd (that unit runs
# after cloud-final), so containerd starts on the restored image. No cache volume (no snapshot yet, or none
# found): containerd keeps its root on the root volume and pulls, as without the cache.
NODE_SCRIPT = f"""#!/usr/bin/env bash
# containerd's root on the image-cache volume restored from the stack's snapshot (infra/image_cache.py).
set -euo pipefail
udevadm settle
if [ ! -e /dev/disk/by-label/{CACHE_LABEL} ]; then
  echo "no {CACHE_LABEL} volume: containerd pulls images as usual" >&2
  exit 0
fi
echo "LABEL={CACHE_LABEL} /var/lib/containerd xfs defaults,noatime,nofail,x-systemd.before=containerd.service 0 2" \\
  >> /etc/fstab
mount /var/lib/containerd
xfs_growfs /var/lib/containerd
"""

# nodeadm would otherwise move containerd's root onto the instance-store RAID0 (the node class's
# instanceStorePolicy), over the restored volume; the kubelet's directory and pod logs stay there.
NODE_CONFIG = """apiVersion: node.eks.aws/v1alpha1
kind: NodeConfig
spec:
  instance:
    localStorage:
      disabledMounts: [Containerd]
"""
_BOUNDARY = "FLUX-NEURON-IMAGE-CACHE"
# Karpenter adds its own NodeConfig part to this MIME document (AL2023 user data).
NODE_USER_DATA = (f'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="{_BOUNDARY}"\n\n'
                  f"--{_BOUNDARY}\nContent-Type: application/node.eks.aws\n\n{NODE_CONFIG}\n"
                  f'--{_BOUNDARY}\nContent-Type: text/x-shellscript; charset="us-ascii"\n\n{NODE_SCRIPT}\n'
                  f"--{_BOUNDARY}--\n")


def node_ami_parameter(kubernetes_version: str) -> str:
    """The public SSM parameter holding the AMI the Neuron nodes boot: the AL2023 Neuron variant of the
    release the node class's alias pins (the variant Karpenter resolves the alias to for Neuron types)."""
    release = versions.KUBERNETES_RELEASES[kubernetes_version]["al2023-ami-alias"].split("@", 1)[1]
    return (f"{EKS_AMI_PARAMETERS}/{kubernetes_version}/amazon-linux-2023/x86_64/neuron/"
            f"amazon-eks-node-al2023-x86_64-neuron-{kubernetes_version}-{release}/image_id")


def cache_key(image_ref: str, kubernetes_version: str) -> str:
    """What decides the snapshot's content: the image digest, the AMI (whose containerd wrote the volume and
    whose pause image is on it) and the build script. 20 hex digits: two keys collide about once in 10^24."""
    decided_by = {"image": image_ref, "ami": node_ami_parameter(kubernetes_version), "script": BUILD_SCRIPT,
                  "volume": [CACHE_DEVICE, CACHE_VOLUME_GIB]}
    return hashlib.sha256(json.dumps(decided_by, sort_keys=True).encode()).hexdigest()[:20]


def snapshot_filters(stack_tag: str, key: pulumi.Input[str]) -> list[dict]:
    """The stack's completed cache snapshots of one key (DescribeSnapshots filters)."""
    return [{"name": f"tag:{IMAGE_CACHE_TAG}", "values": [stack_tag]},
            {"name": f"tag:{IMAGE_CACHE_KEY_TAG}", "values": [key]},
            {"name": "status", "values": ["completed"]}]


def _api_filters(filters: list[dict]) -> list[dict]:
    return [{"Name": entry["name"], "Values": entry["values"]} for entry in filters]


def _tags(stack_tag: str, name: str, key: str = "{{ CacheKey }}") -> list[dict]:
    return [{"Key": IMAGE_CACHE_TAG, "Value": stack_tag}, {"Key": IMAGE_CACHE_KEY_TAG, "Value": key},
            {"Key": "Name", "Value": name}]


FIND_SCRIPT = """import boto3


def find(events, context):
    snapshots = boto3.client("ec2").describe_snapshots(OwnerIds=["self"], Filters=events["Filters"])["Snapshots"]
    return {"Found": "yes" if snapshots else "no"}
"""
PRUNE_SCRIPT = """import boto3


def prune(events, context):
    ec2 = boto3.client("ec2")
    snapshots = ec2.describe_snapshots(OwnerIds=["self"], Filters=events["Filters"])["Snapshots"]
    completed = sorted((s for s in snapshots if s["State"] == "completed"), key=lambda s: s["StartTime"],
                       reverse=True)
    doomed = completed[events["Keep"]:] + [s for s in snapshots if s["State"] == "error"]
    for snapshot in doomed:
        ec2.delete_snapshot(SnapshotId=snapshot["SnapshotId"])
    return {"Deleted": [s["SnapshotId"] for s in doomed]}
"""


def runbook(stack_tag: str, subnet_id: str, security_group_id: str, instance_profile: str) -> dict:
    """The Automation runbook that builds one key's snapshot, or nothing if it exists."""
    on_failure = "step:TerminateBuilder"
    instance = "{{ LaunchBuilder.InstanceId }}"
    return {
        "schemaVersion": "0.3",
        "description": "flux-neuron: the serving image pulled into an EBS snapshot for new Neuron nodes",
        "assumeRole": "{{ AutomationAssumeRole }}",
        "parameters": {
            "AutomationAssumeRole": {"type": "String"},
            "ImageRef": {"type": "String", "allowedPattern": r"^[a-z0-9][a-z0-9./:_-]*@sha256:[0-9a-f]{64}$"},
            "CacheKey": {"type": "String", "allowedPattern": "^[0-9a-f]{20}$"},
            "AmiParameter": {"type": "String", "allowedPattern": f"^{EKS_AMI_PARAMETERS}/[a-z0-9./_-]+$"},
        },
        "mainSteps": [
            {"name": "FindCachedSnapshot", "action": "aws:executeScript",
             "inputs": {"Runtime": "python3.11", "Handler": "find", "Script": FIND_SCRIPT,
                        "InputPayload": {"Filters": _api_filters(snapshot_filters(stack_tag, "{{ CacheKey }}"))}},
             "outputs": [{"Name": "Found", "Selector": "$.Payload.Found", "Type": "String"}]},
            {"name": "BuildUnlessCached", "action": "aws:branch",
             "inputs": {"Choices": [{"NextStep": "LaunchBuilder", "Variable": "{{ FindCachedSnapshot.Found }}",
                                     "StringEquals": "no"}],
                        "Default": "AlreadyCached"}},
            {"name": "LaunchBuilder", "action": "aws:executeAwsApi",
             "inputs": {"Service": "ec2", "Api": "RunInstances", "ImageId": "resolve:ssm:{{ AmiParameter }}",
                        "InstanceType": BUILDER_INSTANCE_TYPE, "MinCount": 1, "MaxCount": 1, "SubnetId": subnet_id,
                        "SecurityGroupIds": [security_group_id], "IamInstanceProfile": {"Name": instance_profile},
                        "MetadataOptions": {"HttpEndpoint": "enabled", "HttpTokens": "required",
                                            "HttpPutResponseHopLimit": iam.IMDS_HOP_LIMIT},
                        "BlockDeviceMappings": [{"DeviceName": CACHE_DEVICE, "Ebs": {
                            "VolumeSize": CACHE_VOLUME_GIB, "VolumeType": CACHE_VOLUME["volumeType"],
                            "Iops": CACHE_VOLUME["iops"], "Throughput": CACHE_VOLUME["throughput"],
                            "Encrypted": True, "DeleteOnTermination": True}}],
                        "TagSpecifications": [
                            {"ResourceType": kind, "Tags": _tags(stack_tag, f"{stack_tag}-image-cache-builder")}
                            for kind in ("instance", "volume", "network-interface")]},
             "outputs": [{"Name": "InstanceId", "Selector": "$.Instances[0].InstanceId", "Type": "String"}]},
            {"name": "WaitForBuilder", "action": "aws:waitForAwsResourceProperty", "timeoutSeconds": 900,
             "onFailure": on_failure,
             "inputs": {"Service": "ssm", "Api": "DescribeInstanceInformation",
                        "Filters": [{"Key": "InstanceIds", "Values": [instance]}],
                        "PropertySelector": "$.InstanceInformationList[0].PingStatus", "DesiredValues": ["Online"]}},
            {"name": "PullImage", "action": "aws:runCommand", "timeoutSeconds": 2400, "onFailure": on_failure,
             "inputs": {"DocumentName": RUN_SHELL_SCRIPT, "InstanceIds": [instance],
                        "Parameters": {"commands": [BUILD_SCRIPT], "executionTimeout": "2400"}}},
            {"name": "FindCacheVolume", "action": "aws:executeAwsApi", "onFailure": on_failure,
             "inputs": {"Service": "ec2", "Api": "DescribeVolumes",
                        "Filters": [{"Name": "attachment.instance-id", "Values": [instance]},
                                    {"Name": "attachment.device", "Values": [CACHE_DEVICE]}]},
             "outputs": [{"Name": "VolumeId", "Selector": "$.Volumes[0].VolumeId", "Type": "String"}]},
            {"name": "CreateSnapshot", "action": "aws:executeAwsApi", "onFailure": on_failure,
             "inputs": {"Service": "ec2", "Api": "CreateSnapshot", "VolumeId": "{{ FindCacheVolume.VolumeId }}",
                        "Description": "{{ ImageRef }}",
                        "TagSpecifications": [{"ResourceType": "snapshot",
                                               "Tags": _tags(stack_tag, f"{stack_tag}-image-cache")}]},
             "outputs": [{"Name": "SnapshotId", "Selector": "$.SnapshotId", "Type": "String"}]},
            {"name": "WaitForSnapshot", "action": "aws:waitForAwsResourceProperty",
             "timeoutSeconds": BUILD_TIMEOUT_SECONDS, "onFailure": on_failure,
             "inputs": {"Service": "ec2", "Api": "DescribeSnapshots", "SnapshotIds": ["{{ CreateSnapshot.SnapshotId }}"],
                        "PropertySelector": "$.Snapshots[0].State", "DesiredValues": ["completed"]}},
            # Reached after a failed step too (onFailure): the automation still ends Failed, as that step
            # is critical, and no builder is left running.
            {"name": "TerminateBuilder", "action": "aws:executeAwsApi",
             "inputs": {"Service": "ec2", "Api": "TerminateInstances", "InstanceIds": [instance]}},
            {"name": "PruneSnapshots", "action": "aws:executeScript", "isEnd": True,
             "inputs": {"Runtime": "python3.11", "Handler": "prune", "Script": PRUNE_SCRIPT,
                        "InputPayload": {"Keep": KEEP_SNAPSHOTS,
                                         "Filters": [{"Name": f"tag:{IMAGE_CACHE_TAG}", "Values": [stack_tag]}]}}},
            {"name": "AlreadyCached", "action": "aws:sleep", "isEnd": True, "inputs": {"Duration": "PT1S"}},
        ],
    }


def automation_policy(region: str, account: str, stack_tag: str, subnet_arn: str, security_group_arn: str,
                      builder_role_arn: str) -> dict:
    """What the runbook may do: launch a builder tagged as the stack's, run the build on it, snapshot its volume,
    terminate it and delete the stack's cache snapshots; nothing else of EC2 that is not the stack's."""
    ec2 = f"arn:aws:ec2:{region}"
    # Snapshot and image ARNs have no account; ssm's public parameters and documents neither.
    snapshots = f"{ec2}::snapshot/*"
    tagged = {f"aws:ResourceTag/{IMAGE_CACHE_TAG}": stack_tag}
    return {"Version": "2012-10-17", "Statement": [
        # What the runbook waits on and looks up: calls without resource-level permissions.
        {"Sid": "ReadBuildState", "Effect": "Allow",
         "Action": ["ec2:DescribeSnapshots", "ec2:DescribeVolumes", "ssm:DescribeInstanceInformation",
                    "ssm:ListCommands", "ssm:ListCommandInvocations", "ssm:GetCommandInvocation"],
         "Resource": "*", "Condition": {"StringEquals": {"aws:RequestedRegion": region}}},
        {"Sid": "ResolveTheNodeAmi", "Effect": "Allow", "Action": "ssm:GetParameters",
         "Resource": f"arn:aws:ssm:{region}::parameter{EKS_AMI_PARAMETERS}/*"},
        {"Sid": "LaunchFromTheAmiIntoTheBuildNetwork", "Effect": "Allow", "Action": "ec2:RunInstances",
         "Resource": [f"{ec2}::image/*", subnet_arn, security_group_arn]},
        {"Sid": "LaunchOnlyTaggedBuilders", "Effect": "Allow", "Action": "ec2:RunInstances",
         "Resource": [f"{ec2}:{account}:instance/*", f"{ec2}:{account}:volume/*",
                      f"{ec2}:{account}:network-interface/*"],
         "Condition": {"StringEquals": {f"aws:RequestTag/{IMAGE_CACHE_TAG}": stack_tag}}},
        {"Sid": "TagWhatTheBuildCreates", "Effect": "Allow", "Action": "ec2:CreateTags",
         "Resource": [f"{ec2}:{account}:instance/*", f"{ec2}:{account}:volume/*",
                      f"{ec2}:{account}:network-interface/*", snapshots],
         "Condition": {"StringEquals": {"ec2:CreateAction": ["RunInstances", "CreateSnapshot"]}}},
        {"Sid": "PassTheBuilderRole", "Effect": "Allow", "Action": "iam:PassRole", "Resource": builder_role_arn,
         "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}},
        {"Sid": "RunTheBuildDocument", "Effect": "Allow", "Action": "ssm:SendCommand",
         "Resource": f"arn:aws:ssm:{region}::document/{RUN_SHELL_SCRIPT}"},
        {"Sid": "RunTheBuildOnBuildersOnly", "Effect": "Allow", "Action": "ssm:SendCommand",
         "Resource": f"{ec2}:{account}:instance/*",
         "Condition": {"StringEquals": {f"ssm:resourceTag/{IMAGE_CACHE_TAG}": stack_tag}}},
        {"Sid": "SnapshotBuilderVolumes", "Effect": "Allow", "Action": "ec2:CreateSnapshot",
         "Resource": f"{ec2}:{account}:volume/*", "Condition": {"StringEquals": tagged}},
        {"Sid": "CreateTaggedSnapshots", "Effect": "Allow", "Action": "ec2:CreateSnapshot", "Resource": snapshots,
         "Condition": {"StringEquals": {f"aws:RequestTag/{IMAGE_CACHE_TAG}": stack_tag}}},
        {"Sid": "TerminateBuilders", "Effect": "Allow", "Action": "ec2:TerminateInstances",
         "Resource": f"{ec2}:{account}:instance/*", "Condition": {"StringEquals": tagged}},
        {"Sid": "PruneTheStacksSnapshots", "Effect": "Allow", "Action": "ec2:DeleteSnapshot", "Resource": snapshots,
         "Condition": {"StringEquals": tagged}},
    ]}


@dataclass
class ImageCacheArgs:
    image_ref: pulumi.Input[str]  # repository@sha256:<digest>: what the Neuron pods run
    region: str
    kubernetes_version: str
    vpc_id: pulumi.Input[str]
    # The builder runs in the first (private: egress through the NAT gateway) subnet.
    private_subnet_ids: pulumi.Input[list[str]]
    # Where new Neuron nodes launch: the zones fast snapshot restore is enabled in.
    zones: list[str]
    settings: ColdStartSettings


class ImageCache(pulumi.ComponentResource):
    """The snapshot new Neuron nodes restore their image from (`snapshot_id`, None while none is found)."""

    snapshot_id: pulumi.Output[str | None]
    key: pulumi.Output[str]

    def __init__(self, name: str, args: ImageCacheArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("flux-neuron:infra:ImageCache", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        account = aws.get_caller_identity().account_id
        stack_tag = stack_resource_name(pulumi.get_stack())
        subnet_id = pulumi.Output.from_input(args.private_subnet_ids).apply(lambda ids: ids[0])

        builder_role = iam.role(f"{name}-builder", trust=iam.EC2_TRUST, parent=self,
                                managed_policies=("AmazonSSMManagedInstanceCore", "AmazonEC2ContainerRegistryPullOnly"))
        profile = aws.iam.InstanceProfile(f"{name}-builder", role=builder_role.name, opts=child)
        # Out to HTTPS only (ECR, S3, SSM); DNS and IMDS are not filtered by security groups.
        group = aws.ec2.SecurityGroup(
            f"{name}-builder", vpc_id=args.vpc_id, description="flux-neuron image-cache builder: HTTPS out only",
            ingress=[], egress=[{"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_blocks": ["0.0.0.0/0"],
                                 "description": "ECR, S3 and SSM endpoints"}],
            tags={IMAGE_CACHE_TAG: stack_tag}, opts=child)

        automation_role = iam.role(f"{name}-automation", trust=automation_trust(account), parent=self)
        permissions = aws.iam.RolePolicy(
            f"{name}-automation", role=automation_role.id,
            policy=pulumi.Output.all(subnet_id, group.id, builder_role.arn).apply(
                lambda values: json.dumps(automation_policy(
                    args.region, account, stack_tag, f"arn:aws:ec2:{args.region}:{account}:subnet/{values[0]}",
                    f"arn:aws:ec2:{args.region}:{account}:security-group/{values[1]}", values[2]))),
            opts=child)
        document = aws.ssm.Document(
            name, document_type="Automation", document_format="JSON",
            content=pulumi.Output.all(subnet_id, group.id, profile.name).apply(
                lambda values: json.dumps(runbook(stack_tag, *values))),
            opts=child)

        self.key = pulumi.Output.from_input(args.image_ref).apply(lambda ref: cache_key(ref, args.kubernetes_version))
        association = aws.ssm.Association(
            name, name=document.name,
            parameters={"AutomationAssumeRole": automation_role.arn, "ImageRef": args.image_ref, "CacheKey": self.key,
                        "AmiParameter": node_ami_parameter(args.kubernetes_version)},
            wait_for_success_timeout_seconds=BUILD_TIMEOUT_SECONDS,
            # It runs once, when created: a new key must be a new association. The role must hold its
            # permissions before the runbook starts.
            opts=pulumi.ResourceOptions(parent=self, replace_on_changes=["parameters"], depends_on=[permissions]))
        found = aws.ebs.get_snapshot_ids_output(
            owners=["self"], filters=snapshot_filters(stack_tag, self.key),
            opts=pulumi.InvokeOutputOptions(parent=self, depends_on=[association]))
        self.snapshot_id = found.ids.apply(lambda ids: ids[0] if ids else None)
        pulumi.Output.all(self.key, self.snapshot_id).apply(lambda values: values[1] or pulumi.log.warn(
            f"no image-cache snapshot of key {values[0]} found: new Neuron nodes pull their image "
            f"(docs/cold-start.md); `pulumi up --replace` the association {name!r} to build it", resource=self))
        if args.settings.fast_snapshot_restore:
            for zone in args.zones:
                aws.ebs.FastSnapshotRestore(f"{name}-{zone}", availability_zone=zone,
                                            snapshot_id=self.snapshot_id.apply(_required_snapshot), opts=child)
        self.register_outputs({"snapshot_id": self.snapshot_id, "key": self.key})


def automation_trust(account: str) -> dict:
    """SSM Automation assumes the role, for runbooks started in this account only."""
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "ssm.amazonaws.com"}, "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"aws:SourceAccount": account}}}]}


def _required_snapshot(snapshot: str | None) -> str:
    if snapshot is None:
        raise pulumi.RunError("coldStart.fastSnapshotRestore: the image-cache snapshot is missing (deleted by hand?): "
                              "rebuild it with `pulumi up --replace` on the image-cache association, or set "
                              "coldStart.fastSnapshotRestore false to deploy with nodes that pull their image")
    return snapshot
