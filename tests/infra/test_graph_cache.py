"""The graph cache outlives the stack (issue 13, item 5): versioned, retained on destroy by default,
deleted with its objects only when asked, and reusable by name from another stack."""

import json

import pytest

from infra.config import ConfigError, load_stack_config
from planning.offline import manifest, run_program, stack_file_config, with_overrides
from infra.storage import NONCURRENT_VERSION_DAYS

BUCKET = "aws:s3/bucket:Bucket"
GRAPH_CACHE = "flux-neuron:graphCache"
OTHER_STACKS_BUCKET = "flux-neuron-prod-graphs-20261201abcdef"


def s3_resources(rendering):
    return [resource for resource in rendering.resources if resource.type.startswith("aws:s3/")]


def test_destroy_keeps_the_bucket_and_everything_that_keeps_it_private(rendering):
    resources = s3_resources(rendering)
    assert {resource.type.split(":")[-1] for resource in resources} >= {
        "Bucket", "BucketPublicAccessBlock", "BucketPolicy", "BucketServerSideEncryptionConfiguration",
        "BucketVersioning", "BucketLifecycleConfiguration"}
    # A retained bucket without its public access block or TLS-only policy would be worse than none.
    assert all(resource.retain_on_delete for resource in resources)
    assert rendering.one(BUCKET, "graphs").inputs["forceDestroy"] is False


def test_deleted_graphs_stay_recoverable_for_a_while(rendering):
    versioning = rendering.one("aws:s3/bucketVersioning:BucketVersioning", "graphs")
    assert versioning.inputs["versioningConfiguration"] == {"status": "Enabled"}
    lifecycle = rendering.one("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", "graphs")
    rules = {rule["id"]: rule for rule in lifecycle.inputs["rules"]}
    assert rules["expire-deleted-graphs"]["noncurrentVersionExpiration"] == {
        "noncurrentDays": NONCURRENT_VERSION_DAYS}
    assert rules["expire-deleted-graphs"]["expiration"] == {"expiredObjectDeleteMarker": True}
    assert versioning.urn in lifecycle.dependencies


def test_without_retention_destroy_deletes_the_bucket_with_every_object_version():
    rendering = run_program("dev", {GRAPH_CACHE: {"retainOnDestroy": False}})
    assert not any(resource.retain_on_delete for resource in s3_resources(rendering))
    assert rendering.one(BUCKET, "graphs").inputs["forceDestroy"] is True


def test_an_existing_bucket_is_used_and_never_created_or_deleted():
    rendering = run_program("dev", {GRAPH_CACHE: {"bucket": OTHER_STACKS_BUCKET}})
    assert s3_resources(rendering) == []
    assert rendering.outputs["graphsBucket"] == OTHER_STACKS_BUCKET
    for volume in rendering.of_type("kubernetes:core/v1:PersistentVolume"):
        assert manifest(volume)["spec"]["csi"]["volumeAttributes"]["bucketName"] == OTHER_STACKS_BUCKET
    policy = json.loads(rendering.one("aws:iam/rolePolicy:RolePolicy", "graphs-csi-inline").inputs["policy"])
    resources = {statement["Sid"]: statement["Resource"] for statement in policy["Statement"]}
    assert resources == {"ListGraphs": f"arn:aws:s3:::{OTHER_STACKS_BUCKET}",
                         "ReadWriteGraphs": f"arn:aws:s3:::{OTHER_STACKS_BUCKET}/graphs/*"}


BAD_GRAPH_CACHES = {
    "bucket-with-capitals": ({"bucket": "Flux_Graphs"}, "flux-neuron:graphCache.bucket", "'Flux_Graphs'",
                             "an S3 bucket name: 3-63 lowercase letters"),
    "bucket-too-long": ({"bucket": "a" * 64}, "flux-neuron:graphCache.bucket", repr("a" * 64),
                        "an S3 bucket name: 3-63"),
    "retain-as-string": ({"retainOnDestroy": "yes"}, "flux-neuron:graphCache.retainOnDestroy", "'yes'",
                         "true or false"),
    "another-stacks-bucket-deleted": (
        {"bucket": OTHER_STACKS_BUCKET, "retainOnDestroy": False}, "flux-neuron:graphCache.retainOnDestroy",
        "false", "that bucket is not this stack's to delete"),
    "unknown-field": ({"region": "us-east-1"}, "flux-neuron:graphCache.region", "'us-east-1'",
                      "unknown field; allowed fields are retainOnDestroy, bucket"),
}


@pytest.mark.parametrize(("graph_cache", "key", "shown", "allowed"), BAD_GRAPH_CACHES.values(),
                         ids=BAD_GRAPH_CACHES)
def test_a_bad_graph_cache_names_the_key_the_value_and_what_is_allowed(graph_cache, key, shown, allowed):
    raw = with_overrides(stack_file_config("dev")[0], {GRAPH_CACHE: graph_cache})
    with pytest.raises(ConfigError) as raised:
        load_stack_config(raw)
    assert raised.value.key == key
    assert str(raised.value).startswith(f"config {key}: {shown} is not allowed: ")
    assert allowed in str(raised.value)
