"""Reserved capacity (issue 13, item 4): a pool that lists `reserved` names its capacity reservations,
and the EC2NodeClass the pools share selects exactly those (the CRD's schema and CEL rules on the
field are checked by the planning run, planning/checks)."""

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
