"""Every external version the platform deploys, pinned in one place.

Bumping a pin is a reviewed change: the plan diff of every stack shows what it touches. Each pin
names its source. The kube-scheduler tags, the AMI alias, the Neuron chart (its values and its components'
SDK) and the Mountpoint add-on (the fixes the stack relies on) are checked against release data committed
under `planning/data/published/` by `python -m planning --check` ("Published versions"); the comments of the
others say how to confirm a bump.
"""

# The image's base (the Neuron DLC) and its SDK version are pinned in common/image.py, with their source:
# the runtime reads them too.

KARPENTER_CHART_REPO = "oci://public.ecr.aws/karpenter"
# Source: github.com/aws/karpenter-provider-aws release v1.14.1; its CRDs (planning/data/karpenter-crds-v1.14.1/)
# and getting-started CloudFormation (planning/data/official/) are committed from that tag.
KARPENTER_VERSION = "1.14.1"

NEURON_CHART_REPO = "oci://public.ecr.aws/neuron"
# Source: github.com/aws-neuron/neuron-helm-charts release 1.9.0, the chart of the Neuron SDK 2.31 components
# (device plugin and scheduler extension 2.31.0.0; SDK 2.31.1 changed only the tools). The values this program
# sets must be values of that chart, and its components the pinned SDK's: both checked against
# planning/data/published/neuron-helm-chart-values.txt. Confirm a bump with `helm show values
# oci://public.ecr.aws/neuron/neuron-helm-chart --version <v>` and record it there.
NEURON_CHART_VERSION = "1.9.0"
KUBE_SCHEDULER_IMAGE_REPO = "public.ecr.aws/eks-distro/kubernetes/kube-scheduler"

AWS_LOAD_BALANCER_CONTROLLER_CHART_REPO = "https://aws.github.io/eks-charts"
# Source: github.com/aws/eks-charts, chart aws-load-balancer-controller 1.14.1. It installs controller v2.14.1
# (the chart's appVersion; its iam_policy.json is committed in planning/data/official/), the first with ALB URL
# rewrite (`alb.ingress.kubernetes.io/transforms.*`), which strips /flux/<shape> before requests reach the servers.
AWS_LOAD_BALANCER_CONTROLLER_VERSION = "1.14.1"
AWS_LOAD_BALANCER_CONTROLLER_APP_VERSION = "2.14.1"

# The serving autoscaler's metric pipeline: Prometheus scrapes the servers, the adapter serves
# the result to the HPA through the custom metrics API.
PROMETHEUS_CHART_REPO = "https://prometheus-community.github.io/helm-charts"
# Source: github.com/prometheus-community/helm-charts releases prometheus-27.13.0 and prometheus-adapter-5.1.0
# (not in the committed data; confirm with `helm search repo prometheus-community/<chart> --versions`).
PROMETHEUS_CHART_VERSION = "27.13.0"
PROMETHEUS_ADAPTER_CHART_VERSION = "5.1.0"

# The CloudWatch agent that takes the serving metrics to CloudWatch (infra.dashboard): the image the pinned
# amazon-cloudwatch-observability add-on (v4.5.0, below) runs its own agents with, so its operator manages a
# version it knows. Source: github.com/aws-observability/helm-charts, tag amazon-cloudwatch-observability-4.5.0,
# charts/amazon-cloudwatch-observability/values.yaml (agent.image); its AmazonCloudWatchAgent CRD from that tag
# is committed in planning/data/ (the planning check validates the agent against it). Bump with the add-on.
CLOUDWATCH_AGENT_IMAGE = "public.ecr.aws/cloudwatch-agent/cloudwatch-agent:1.300060.0b1248"
CLOUDWATCH_OBSERVABILITY_CHART_VERSION = "4.5.0"

# Per Kubernetes minor: what EKS ships for that minor. The supported minors are exactly these keys.
# kube-scheduler: EKS Distro release notes (planning/data/published/kube-scheduler-tags.txt; checked), the
# latest release of 1.34 there and a published release of 1.33. al2023-ami-alias: the EKS-optimized AMI release
# Karpenter resolves for Neuron nodes (the accelerated AL2023 variant of that release, for the cluster's minor);
# source: the amazon-eks-ami CHANGELOG (planning/data/published/al2023-ami-neuron-driver.txt; checked):
# v20260714 is the first release whose AL2023_x86_64_NEURON variant ships driver 2.29.0.0, which Neuron SDK
# 2.31.1 needs; that driver supports trn1, inf2 and trn2 (trn2 from driver 2.19.64.0, Neuron 2.21.0), and trn1n runs
# trn1's (planning/data/published/neuron-driver-families.txt, from the Neuron SDK's n2-manifest.json; checked for the
# families a stack's NodePools launch). The others are EKS add-on versions, source `aws eks describe-addon-versions
# --kubernetes-version <minor>` (not in the committed data: confirm a bump there). aws-ebs-csi-driver is the
# EKS build of the driver's release v1.63.1 (github.com/kubernetes-sigs/aws-ebs-csi-driver CHANGELOG.md).
# aws-mountpoint-s3-csi-driver: the EKS build of the driver's latest release, v2.7.0, which has the fixes
# planning/data/published/mountpoint-s3-csi-driver-releases.txt names (checked); the -eksbuild suffix is, as for
# the other add-ons, to confirm with describe-addon-versions.
# eks-node-monitoring-agent:
# the add-on build of github.com/aws/eks-node-monitoring-agent v1.7.0, its latest release (Aug 2026), whose
# chart's nodeAgent image is v1.7.0-eksbuild.1; the same for both minors. Not confirmed against
# describe-addon-versions from here (no AWS): check it there before the first `up`.
KUBERNETES_RELEASES: dict[str, dict[str, str]] = {
    "1.33": {
        "al2023-ami-alias": "al2023@v20260714",
        "kube-scheduler": "v1.33.7-eks-1-33-23",
        "vpc-cni": "v1.20.4-eksbuild.2",
        "coredns": "v1.12.4-eksbuild.1",
        "kube-proxy": "v1.33.3-eksbuild.6",
        "eks-pod-identity-agent": "v1.3.8-eksbuild.2",
        "aws-mountpoint-s3-csi-driver": "v2.7.0-eksbuild.1",
        "amazon-cloudwatch-observability": "v4.5.0-eksbuild.1",
        "eks-node-monitoring-agent": "v1.7.0-eksbuild.1",
        "aws-ebs-csi-driver": "v1.63.1-eksbuild.1",
    },
    "1.34": {
        "al2023-ami-alias": "al2023@v20260714",
        "kube-scheduler": "v1.34.9-eks-1-34-21",
        "vpc-cni": "v1.20.4-eksbuild.2",
        "coredns": "v1.12.4-eksbuild.1",
        "kube-proxy": "v1.34.0-eksbuild.2",
        "eks-pod-identity-agent": "v1.3.8-eksbuild.2",
        "aws-mountpoint-s3-csi-driver": "v2.7.0-eksbuild.1",
        "amazon-cloudwatch-observability": "v4.5.0-eksbuild.1",
        "eks-node-monitoring-agent": "v1.7.0-eksbuild.1",
        "aws-ebs-csi-driver": "v1.63.1-eksbuild.1",
    },
}
