"""Container Insights through the amazon-cloudwatch-observability add-on, which also collects
NeuronCore utilisation, device memory and execution errors once the device plugin runs."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra import iam, versions
from infra.options import children

ADDON = "amazon-cloudwatch-observability"
AGENT_SERVICE_ACCOUNT = "cloudwatch-agent"


@dataclass
class ObservabilityArgs:
    cluster_name: pulumi.Input[str]
    kubernetes_version: str


class Observability(pulumi.ComponentResource):
    """Give it what the add-on waits for through `opts`."""

    def __init__(self, name: str, args: ObservabilityArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("flux-neuron:infra:Observability", name, None, opts)
        agent_role = iam.pod_identity_role(
            f"{name}-agent", parent=self,
            managed_policies=("CloudWatchAgentServerPolicy",))
        self.addon = aws.eks.Addon(
            name, cluster_name=args.cluster_name, addon_name=ADDON,
            addon_version=versions.KUBERNETES_RELEASES[args.kubernetes_version][ADDON],
            pod_identity_associations=[{"role_arn": agent_role.arn, "service_account": AGENT_SERVICE_ACCOUNT}],
            resolve_conflicts_on_create="OVERWRITE", resolve_conflicts_on_update="OVERWRITE",
            opts=children(self, opts))
        self.register_outputs({"addon": self.addon.addon_name})
