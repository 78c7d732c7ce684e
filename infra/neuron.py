"""The Neuron device plugin, the scheduler extension and the second kube-scheduler that uses it."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra import versions
from infra.naming import NEURON_SCHEDULER_NAME, SYSTEM_NAMESPACE, SYSTEM_NODE_LABEL
from infra.options import children


@dataclass
class NeuronArgs:
    kubernetes_version: str


def chart_values(kubernetes_version: str) -> dict:
    scheduler_tag = versions.KUBERNETES_RELEASES[kubernetes_version]["kube-scheduler"]
    return {
        "npd": {"enabled": False},
        "scheduler": {
            "enabled": True,
            # The chart pins the extender to master nodes, which EKS does not have: run it with the
            # other controllers on the system node group.
            "nodeSelector": SYSTEM_NODE_LABEL,
            "tolerations": [],
            "customScheduler": {
                "fullnameOverride": NEURON_SCHEDULER_NAME,
                # kube-scheduler must match the API server's minor or it misreads scheduling APIs.
                "image": {"tag": scheduler_tag},
                "nodeSelector": SYSTEM_NODE_LABEL,
            },
        },
    }


class Neuron(pulumi.ComponentResource):
    """Give it the cluster's Kubernetes provider and what its release waits for through `opts`."""

    scheduler_name: str

    def __init__(self, name: str, args: NeuronArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("flux-neuron:infra:Neuron", name, None, opts)
        self.release = k8s.helm.v3.Release(
            name, name="neuron-helm-chart", chart=f"{versions.NEURON_CHART_REPO}/neuron-helm-chart",
            version=versions.NEURON_CHART_VERSION, namespace=SYSTEM_NAMESPACE,
            values=chart_values(args.kubernetes_version),
            opts=children(self, opts))
        self.scheduler_name = NEURON_SCHEDULER_NAME
        self.register_outputs({"scheduler_name": self.scheduler_name})
