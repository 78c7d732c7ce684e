"""Every external version the platform deploys, pinned in one place.

Bumping a pin is a reviewed change: the plan diff of every stack shows what it touches.
"""

# Neuron Deep Learning Container the serving/compile image is built FROM (last trn1/inf2 SDK).
NEURON_DLC_IMAGE = "public.ecr.aws/neuron/pytorch-inference-neuronx:2.9.0-neuronx-py312-sdk2.31.1-ubuntu24.04"
NEURON_SDK_VERSION = "2.31.1"

KARPENTER_CHART_REPO = "oci://public.ecr.aws/karpenter"
KARPENTER_VERSION = "1.14.1"

NEURON_CHART_REPO = "oci://public.ecr.aws/neuron"
NEURON_CHART_VERSION = "1.5.0"
KUBE_SCHEDULER_IMAGE_REPO = "public.ecr.aws/eks-distro/kubernetes/kube-scheduler"

AWS_LOAD_BALANCER_CONTROLLER_CHART_REPO = "https://aws.github.io/eks-charts"
# Chart 1.14.1 = controller v2.14.1, the first with ALB URL rewrite (`alb.ingress.kubernetes.io/transforms.*`),
# which strips /flux/<shape> before requests reach the servers.
AWS_LOAD_BALANCER_CONTROLLER_VERSION = "1.14.1"

# The serving autoscaler's metric pipeline: Prometheus scrapes the servers, the adapter serves
# the result to the HPA through the custom metrics API.
PROMETHEUS_CHART_REPO = "https://prometheus-community.github.io/helm-charts"
PROMETHEUS_CHART_VERSION = "27.13.0"
PROMETHEUS_ADAPTER_CHART_VERSION = "5.1.0"

# Per Kubernetes minor: what EKS ships for that minor. The supported minors are exactly these keys.
# kube-scheduler tags are EKS Distro releases (public.ecr.aws/eks-distro); al2023-ami-alias is the
# EKS-optimized AMI release Karpenter resolves for Neuron nodes (the accelerated AL2023 variant of
# that release, for the cluster's minor: a release built before a minor existed has no AMI for it);
# the others are EKS add-on versions: confirm a bump with
# `aws eks describe-addon-versions --kubernetes-version <minor>`.
KUBERNETES_RELEASES: dict[str, dict[str, str]] = {
    "1.33": {
        "al2023-ami-alias": "al2023@v20250915",
        "kube-scheduler": "v1.33.7-eks-1-33-23",
        "vpc-cni": "v1.20.4-eksbuild.2",
        "coredns": "v1.12.4-eksbuild.1",
        "kube-proxy": "v1.33.3-eksbuild.6",
        "eks-pod-identity-agent": "v1.3.8-eksbuild.2",
        "aws-mountpoint-s3-csi-driver": "v2.1.0-eksbuild.1",
        "amazon-cloudwatch-observability": "v4.5.0-eksbuild.1",
    },
    "1.34": {
        "al2023-ami-alias": "al2023@v20250915",
        "kube-scheduler": "v1.34.11-eks-1-34-24",
        "vpc-cni": "v1.20.4-eksbuild.2",
        "coredns": "v1.12.4-eksbuild.1",
        "kube-proxy": "v1.34.0-eksbuild.2",
        "eks-pod-identity-agent": "v1.3.8-eksbuild.2",
        "aws-mountpoint-s3-csi-driver": "v2.1.0-eksbuild.1",
        "amazon-cloudwatch-observability": "v4.5.0-eksbuild.1",
    },
}
