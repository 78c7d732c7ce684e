"""Names, labels, taints and other identifiers shared by the components and the workloads."""

PROJECT = "flux-neuron"


def stack_resource_name(stack: str) -> str:
    """`flux-neuron-<stack>`: the EKS cluster, its Karpenter interruption queue and the ECR repository."""
    return f"{PROJECT}-{stack}"


def graphs_bucket_prefix(stack: str) -> str:
    """S3 appends a unique suffix to this prefix to name the stack's graph cache bucket."""
    return f"{stack_resource_name(stack)}-graphs-"

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
# Every NodePool of a Neuron family labels its nodes with the family: pods select the family, and
# Karpenter picks among its pools (the on-demand base first, then Spot) by weight and limits.
NEURON_FAMILY_LABEL = "flux-neuron.io/neuron-family"
# Karpenter's well-known label of a node's capacity type, and the values this program uses.
CAPACITY_TYPE_LABEL = "karpenter.sh/capacity-type"
ON_DEMAND = "on-demand"
SPOT = "spot"


def neuron_nodepool(family: str) -> str:
    """The family's only NodePool or, where its capacity types include Spot, its on-demand base."""
    return f"neuron-{family}"


def neuron_spot_nodepool(family: str) -> str:
    """The family's Spot NodePool for serving burst, when its capacity types include Spot."""
    return f"neuron-{family}-{SPOT}"


# Mountpoint volumes for the compiled graph cache.
GRAPHS_PV_READ_WRITE = "flux-graphs-rw"
GRAPHS_PV_READ_ONLY = "flux-graphs-ro"
GRAPHS_BUCKET_PREFIX = "graphs/"

# Workloads: one weights Job per stack, one graphs Job and one serving Deployment per configured shape, and
# the activator that lets serving pods start once their artifacts are published.
APP_NAME = "flux"
COMPILE = "compile"
SERVE = "serve"
ACTIVATE = "activate"
COMPILE_SERVICE_ACCOUNT = "flux-compile"
SERVE_SERVICE_ACCOUNT = "flux-serve"
ACTIVATOR = "flux-activator"
# The weights Job's name part beside flux-compile-<shape>: flux-weights-<key>.
WEIGHTS_JOB_PREFIX = f"{APP_NAME}-weights"
# pulumi-kubernetes creates an object with this annotation and returns: no readiness await, so `pulumi up` ends
# once the objects exist (the API server validated them), never hours later when a compile ends. It skips the
# deletion await too.
NOT_AWAITED = {"pulumi.com/skipAwait": "true"}
HF_TOKEN_SECRET = "hf-token"
HF_TOKEN_SECRET_KEY = "token"
INGRESS_NAME = "flux"
# Public path of a shape's endpoint on the load balancer: /flux/<shape>/generate, ...
ENDPOINT_PATH_PREFIX = "/flux"
# Prometheus and its adapter: the request metric the serving autoscaler scales on.
METRICS_NAMESPACE = "monitoring"
LOAD_BALANCER_CONTROLLER_SERVICE_ACCOUNT = "aws-load-balancer-controller"


def workload_name(component: str, shape: object) -> str:
    """`flux-compile-1024x576`, `flux-serve-1024x576`: a valid DNS label for every allowed shape."""
    return f"{APP_NAME}-{component}-{shape}"


def component_labels(component: str) -> dict[str, str]:
    """The labels every pod of one component has, whatever its shape; NetworkPolicies select on these."""
    return {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/component": component,
            "app.kubernetes.io/part-of": PROJECT}


def workload_labels(component: str, shape: object) -> dict[str, str]:
    """The labels of one shape's pods; Services, PDBs and the scrape config select on exactly these."""
    return {**component_labels(component), "app.kubernetes.io/instance": workload_name(component, shape)}


def endpoint_path(shape: object) -> str:
    return f"{ENDPOINT_PATH_PREFIX}/{shape}"


# The tags of the image-cache snapshots (infra/image_cache.py): whose they are (valued the stack's resource
# name) and which image and AMI they hold (the cache key).
IMAGE_CACHE_TAG = "flux-neuron.io/image-cache"
IMAGE_CACHE_KEY_TAG = "flux-neuron.io/image-cache-key"
