"""The S3 graph cache, the Mountpoint for Amazon S3 CSI driver, and the volumes that mount it:
read-write for compile Jobs, read-only for serving.

Neither volume has a Mountpoint data cache: a serving pod reads each graph file exactly once,
into its own verified, memory-backed copy (infra/pods.py), which is the graphs' one cache
on the node. A Mountpoint cache would write a second copy to node disk that Karpenter does not
account for and that goes with the Mountpoint Pod, so it saves no re-read (docs/cold-start.md)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from common.image import CONTAINER_UID
from infra import catalog, iam, versions
from infra.config import GraphCacheSettings
from infra.naming import GRAPHS_BUCKET_PREFIX, GRAPHS_PV_READ_ONLY, GRAPHS_PV_READ_WRITE, graphs_bucket_prefix
from infra.options import after, children

CSI_DRIVER = "s3.csi.aws.com"
CSI_ADDON = "aws-mountpoint-s3-csi-driver"
CSI_SERVICE_ACCOUNT = "s3-csi-driver-sa"
# Mountpoint ignores capacity, but a PersistentVolume must state one.
NOMINAL_CAPACITY = "1Ti"
# Artifacts are content-addressed and never overwritten, so a noncurrent version exists only
# after someone deleted a graph: it stays recoverable this long, then stops costing storage.
NONCURRENT_VERSION_DAYS = 14


@dataclass
class StorageArgs:
    cluster_name: pulumi.Input[str]
    region: str
    kubernetes_version: str
    namespace: pulumi.Input[str]
    # The instance types the pods of each volume run on: the serving pool's (read-only), the publishing Jobs'
    # (read-write).
    serving_instance_types: tuple[str, ...]
    publishing_instance_types: tuple[str, ...]
    cache: GraphCacheSettings = GraphCacheSettings()


def graphs_mount_options(region: str, instance_types: tuple[str, ...], *, read_only: bool) -> list[str]:
    # Mountpoint Pods cannot read the instance type from IMDS (hop limit 1, infra/iam.py), so without a target
    # they would aim at 10 Gbps whatever the NIC: the smallest network figure of the types the volume is mounted
    # on (infra/catalog.py), which infra/cold_start.py's artifact read assumes too.
    common = [f"region {region}", f"prefix {GRAPHS_BUCKET_PREFIX}", "allow-other",
              f"uid {CONTAINER_UID}", f"gid {CONTAINER_UID}",
              f"maximum-throughput-gbps {catalog.mountpoint_gbps(instance_types)}"]
    # Published artifacts never change (their key is their path), so metadata can be cached forever.
    return common + ["read-only", "metadata-ttl indefinite"] if read_only else common


class Storage(pulumi.ComponentResource):
    """Give it the cluster's Kubernetes provider and what the CSI driver add-on waits for through `opts`."""

    bucket_name: pulumi.Output[str]
    read_write_claim: pulumi.Output[str]
    read_only_claim: pulumi.Output[str]

    def __init__(self, name: str, args: StorageArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("flux-neuron:infra:Storage", name, None, opts)
        if args.cache.bucket is None:
            bucket_name, bucket_arn = self._bucket(name, args.cache)
        else:
            # Another stack's cache: that stack owns (and configured) the bucket; this one only uses it.
            bucket_name = pulumi.Output.from_input(args.cache.bucket)
            bucket_arn = pulumi.Output.from_input(f"arn:{aws.get_partition().partition}:s3:::{args.cache.bucket}")

        # Compile Jobs write new objects and never delete or overwrite, so no s3:DeleteObject.
        driver_role = iam.pod_identity_role(
            f"{name}-csi", parent=self,
            inline_policy=iam.policy_document([
                {"Sid": "ListGraphs", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": bucket_arn,
                 "Condition": {"StringLike": {"s3:prefix": [f"{GRAPHS_BUCKET_PREFIX}*"]}}},
                {"Sid": "ReadWriteGraphs", "Effect": "Allow",
                 "Action": ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
                 "Resource": pulumi.Output.concat(bucket_arn, f"/{GRAPHS_BUCKET_PREFIX}*")},
            ]))
        driver = aws.eks.Addon(
            f"{name}-csi", cluster_name=args.cluster_name, addon_name=CSI_ADDON,
            addon_version=versions.KUBERNETES_RELEASES[args.kubernetes_version][CSI_ADDON],
            pod_identity_associations=[{"role_arn": driver_role.arn, "service_account": CSI_SERVICE_ACCOUNT}],
            resolve_conflicts_on_create="OVERWRITE", resolve_conflicts_on_update="OVERWRITE",
            opts=children(self, opts))

        in_cluster = after(pulumi.ResourceOptions(parent=self), driver)
        self.read_write_claim = self._volume(
            GRAPHS_PV_READ_WRITE, bucket_name, args, "ReadWriteMany",
            graphs_mount_options(args.region, args.publishing_instance_types, read_only=False), in_cluster)
        self.read_only_claim = self._volume(
            GRAPHS_PV_READ_ONLY, bucket_name, args, "ReadOnlyMany",
            graphs_mount_options(args.region, args.serving_instance_types, read_only=True), in_cluster)
        self.bucket_name = bucket_name
        self.register_outputs({"bucket_name": self.bucket_name, "read_write_claim": self.read_write_claim,
                               "read_only_claim": self.read_only_claim})

    def _bucket(self, name: str, cache: GraphCacheSettings) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
        """The stack's own cache bucket, private, encrypted, TLS-only and versioned; its name and ARN.

        Retained on destroy (the default), the bucket and everything that keeps it private stay as
        they are; otherwise destroy deletes it with every object version.
        """
        child = pulumi.ResourceOptions(parent=self, retain_on_delete=cache.retain_on_destroy)
        bucket = aws.s3.Bucket(name, bucket_prefix=graphs_bucket_prefix(pulumi.get_stack()),
                               force_destroy=not cache.retain_on_destroy, opts=child)
        aws.s3.BucketPublicAccessBlock(name, bucket=bucket.id, block_public_acls=True, block_public_policy=True,
                                       ignore_public_acls=True, restrict_public_buckets=True, opts=child)
        aws.s3.BucketOwnershipControls(name, bucket=bucket.id, rule={"object_ownership": "BucketOwnerEnforced"},
                                       opts=child)
        aws.s3.BucketServerSideEncryptionConfiguration(
            name, bucket=bucket.id, rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "aws:kms"},
                                            "bucket_key_enabled": True}], opts=child)
        # A deleted graph (by hand, or a clean-up script gone wrong) can be restored for a while.
        versioning = aws.s3.BucketVersioning(name, bucket=bucket.id,
                                             versioning_configuration={"status": "Enabled"}, opts=child)
        aws.s3.BucketLifecycleConfiguration(
            name, bucket=bucket.id, rules=[
                {"id": "abort-incomplete-multipart-uploads", "status": "Enabled", "filter": {"prefix": ""},
                 "abort_incomplete_multipart_upload": {"days_after_initiation": 1}},
                {"id": "expire-deleted-graphs", "status": "Enabled", "filter": {"prefix": ""},
                 "noncurrent_version_expiration": {"noncurrent_days": NONCURRENT_VERSION_DAYS},
                 "expiration": {"expired_object_delete_marker": True}},
            ],
            # S3 rejects noncurrent-version rules until versioning is on.
            opts=after(child, versioning))
        aws.s3.BucketPolicy(name, bucket=bucket.id, policy=iam.policy_document([
            {"Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
             "Resource": [bucket.arn, pulumi.Output.concat(bucket.arn, "/*")],
             "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
        ]), opts=child)
        return bucket.bucket, bucket.arn

    def _volume(self, volume_name: str, bucket_name: pulumi.Output[str], args: StorageArgs, access_mode: str,
                mount_options: list[str], opts: pulumi.ResourceOptions) -> pulumi.Output[str]:
        """A static PersistentVolume on the bucket and the claim bound to it, both named `volume_name`."""
        volume = k8s.core.v1.PersistentVolume(
            volume_name,
            metadata={"name": volume_name},
            spec={
                "capacity": {"storage": NOMINAL_CAPACITY},
                "accessModes": [access_mode],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "claimRef": {"namespace": args.namespace, "name": volume_name},
                "mountOptions": mount_options,
                "csi": {"driver": CSI_DRIVER, "volumeHandle": volume_name,
                        "volumeAttributes": {"bucketName": bucket_name}},
            },
            opts=opts)
        claim = k8s.core.v1.PersistentVolumeClaim(
            volume_name,
            metadata={"name": volume_name, "namespace": args.namespace},
            spec={"accessModes": [access_mode], "storageClassName": "", "volumeName": volume.metadata.name,
                  "resources": {"requests": {"storage": NOMINAL_CAPACITY}}},
            opts=opts)
        return claim.metadata.name
