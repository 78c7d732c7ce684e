"""Names, labels, taints and other identifiers shared by the components and the workloads."""

PROJECT = "flux-neuron"

# Namespaces.
KARPENTER_NAMESPACE = "karpenter"
SYSTEM_NAMESPACE = "kube-system"
WORKLOAD_NAMESPACE = "flux"

# The managed node group that runs controllers (Karpenter must not run on capacity it manages).
SYSTEM_NODE_LABEL = {"flux-neuron.io/role": "system"}

# Neuron nodes: the device plugin tolerates exactly this taint.
NEURON_TAINT_KEY = "aws.amazon.com/neuron"
NEURON_TAINT_EFFECT = "NoSchedule"
NEURON_DEVICE_RESOURCE = "aws.amazon.com/neuron"
# The second kube-scheduler that neuron-helm-chart installs next to the extender.
NEURON_SCHEDULER_NAME = "my-scheduler"

NODEPOOL_LABEL = "karpenter.sh/nodepool"
CPU_NODEPOOL = "cpu"
EC2_NODECLASS = "default"


def neuron_nodepool(family: str) -> str:
    return f"neuron-{family}"


# Mountpoint volumes for the compiled graph cache.
GRAPHS_PV_READ_WRITE = "flux-graphs-rw"
GRAPHS_PV_READ_ONLY = "flux-graphs-ro"
GRAPHS_BUCKET_PREFIX = "graphs/"
