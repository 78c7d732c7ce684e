"""Reserved capacity (issue 13, item 4): a pool that lists `reserved` names its capacity reservations,
and the EC2NodeClass the pools share selects exactly those (the CRD's schema and CEL rules on the
field are checked by the planning run, planning/checks)."""

import pytest

from infra.config import ConfigError
from infra.naming import ACTIVATOR
from planning.checks import karpenter
from planning.offline import manifest, run_program

NODECLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"
NODEPOOL = "kubernetes:karpenter.sh/v1:NodePool"
RESERVATIONS = ["cr-0123456789abcdef0", "cr-0fedcba9876543210"]


def capacity_types(rendering, nodepool):
    spec = manifest(rendering.one(NODEPOOL, f"karpenter-{nodepool}"))["spec"]["template"]["spec"]
    return next(term["values"] for term in spec["requirements"] if term["key"] == "karpenter.sh/capacity-type")


def test_a_reserved_pool_launches_into_the_reservations_the_node_class_selects():
    rendering = run_program("dev", {"flux-neuron:neuronPools": {"trn1": {
        "instanceTypes": ["trn1.32xlarge"], "capacityTypes": ["reserved", "on-demand"],
        "capacityReservationIds": RESERVATIONS, "maxDevices": 80}}})
    node_class = manifest(rendering.one(NODECLASS, "karpenter-default"))["spec"]
    assert node_class["capacityReservationSelectorTerms"] == [{"id": reservation} for reservation in RESERVATIONS]
    assert capacity_types(rendering, "neuron-trn1") == ["reserved", "on-demand"]
    # The committed v1.14.1 CRDs accept it: schema (id pattern, at most 30) and CEL (id alone in its term).
    assert karpenter.problems([manifest(resource) for resource in rendering.kubernetes_objects()]) == []


def test_without_reserved_pools_the_node_class_selects_no_reservation(rendering):
    assert "capacityReservationSelectorTerms" not in manifest(rendering.one(NODECLASS, "karpenter-default"))["spec"]


# Capacity Blocks for ML are Capacity Reservations to EC2 and Karpenter alike: selected by their cr- id in the same
# terms (Karpenter v1.14.1 docs, "Utilizing ODCRs and Capacity Blocks"); only the status Karpenter writes tells them
# apart (reservationType: capacity-block), and it drains their nodes before EC2 reclaims them.
TRN2_RESERVATIONS = ["cr-0a1b2c3d4e5f60718", "cr-0f1e2d3c4b5a69788"]
TRN2_RESERVED = {"instanceTypes": ["trn2.3xlarge", "trn2.48xlarge"], "capacityTypes": ["reserved", "on-demand"],
                 "capacityReservationIds": TRN2_RESERVATIONS, "maxDevices": 32}


def test_a_trn2_pool_with_reservations_renders_and_passes_the_crds_schema_and_cel():
    rendering = run_program("trn2", {"flux-neuron:neuronPools": {"trn2": TRN2_RESERVED}})
    node_class = manifest(rendering.one(NODECLASS, "karpenter-default"))["spec"]
    assert node_class["capacityReservationSelectorTerms"] == [{"id": reservation} for reservation in TRN2_RESERVATIONS]
    assert capacity_types(rendering, "neuron-trn2") == ["reserved", "on-demand"]
    objects = [manifest(resource) for resource in rendering.kubernetes_objects()]
    assert karpenter.problems(objects) == []
    # The graphs Jobs compile on trn2, on-demand only: off the reservations (a Capacity Block ends, and EC2
    # terminates what runs in it); the serving pods take no side and land in the reservations first.
    for resource in rendering.of_type("kubernetes:batch/v1:Job"):
        selector = manifest(resource)["spec"]["template"]["spec"]["nodeSelector"]
        assert selector["karpenter.sh/capacity-type"] == "on-demand", resource.name
    for resource in rendering.of_type("kubernetes:apps/v1:Deployment"):
        if manifest(resource)["metadata"]["name"] != ACTIVATOR:
            assert "karpenter.sh/capacity-type" not in manifest(resource)["spec"]["template"]["spec"]["nodeSelector"]


def test_a_trn2_pool_of_reservations_alone_is_refused_in_one_line():
    with pytest.raises(ConfigError) as refused:
        run_program("trn2", {"flux-neuron:neuronPools": {"trn2": {**TRN2_RESERVED, "capacityTypes": ["reserved"]}}})
    assert str(refused.value) == (
        'config flux-neuron:neuronPools.trn2.capacityTypes: ["reserved"] is not allowed: a list with on-demand: '
        "compile.pool's Jobs run on-demand only (an interruption, a Capacity Block's end among them, would lose "
        "hours of compiling)")
