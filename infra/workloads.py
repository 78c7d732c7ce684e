"""What runs on the Neuron nodes, per configured shape: a compile Job, named by the shape's artifact
key, that publishes the shape's graphs to the cache, and a Deployment whose pods wait for them to be
published and serve them, with its Service, PodDisruptionBudget and HorizontalPodAutoscaler (their
specs: infra.pods). Shared by all shapes: the HF token Secret and one ServiceAccount per role. The
autoscalers' metric comes from infra.monitoring."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.naming import (
    COMPILE, COMPILE_SERVICE_ACCOUNT, HF_TOKEN_SECRET, HF_TOKEN_SECRET_KEY, SERVE, SERVE_SERVICE_ACCOUNT,
    workload_labels, workload_name,
)
from infra.options import after, children
from infra.pods import (
    COMPILE_JOB_IMAGE_FIELDS, COMPILE_START_MINUTES, WorkloadSettings, autoscaler_spec, compile_job_name,
    compile_job_spec, deployment_deadline_minutes, serving_deployment_spec,
)
from common.shapes import Shape


@dataclass
class WorkloadsArgs:
    shapes: Sequence[Shape]
    settings: WorkloadSettings
    image_ref: pulumi.Input[str]
    hf_token: pulumi.Output[str]  # a secret Output
    namespace: pulumi.Input[str]
    read_write_claim: pulumi.Input[str]
    read_only_claim: pulumi.Input[str]
    scheduler_name: str
    # What the autoscalers read their metric through (Monitoring.autoscaling_metrics): they wait for it.
    autoscaling_metrics: Sequence[pulumi.Resource]


class Workloads(pulumi.ComponentResource):
    """Give it the cluster's Kubernetes provider and what its pods wait for through `opts`."""

    services: dict[str, pulumi.Output[str]]  # shape -> Service name

    def __init__(self, name: str, args: WorkloadsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("flux-neuron:infra:Workloads", name, None, opts)
        settings = args.settings
        in_cluster = children(self, opts)

        def metadata(object_name: str, labels: dict[str, str] | None = None) -> dict:
            return {"name": object_name, "namespace": args.namespace, **({"labels": labels} if labels else {})}

        secret = k8s.core.v1.Secret(
            HF_TOKEN_SECRET, metadata=metadata(HF_TOKEN_SECRET), type="Opaque",
            string_data={HF_TOKEN_SECRET_KEY: args.hf_token}, opts=in_cluster)
        accounts = [
            k8s.core.v1.ServiceAccount(account, metadata=metadata(account), automount_service_account_token=False,
                                       opts=in_cluster)
            for account in (COMPILE_SERVICE_ACCOUNT, SERVE_SERVICE_ACCOUNT)
        ]

        self.services = {}
        compile_minutes = f"{settings.compile.timeout_minutes + COMPILE_START_MINUTES}m"
        for shape in args.shapes:
            # Named by the artifact key: a new key is a new Job (the old one is deleted at the end of
            # the update), and an image that changed nothing of the key changes nothing here.
            compile_name, serve_name = compile_job_name(settings, shape), workload_name(SERVE, shape)
            k8s.batch.v1.Job(
                compile_name, metadata=metadata(compile_name, workload_labels(COMPILE, shape)),
                spec=compile_job_spec(settings, shape, args.image_ref, args.read_write_claim, args.scheduler_name),
                opts=after(
                    in_cluster, secret, *accounts,
                    ignore_changes=list(COMPILE_JOB_IMAGE_FIELDS),
                    # A Job is still replaced under its name when its pod template changes beyond the
                    # key (resources, deadline) or on `pulumi up --replace`. Kubernetes refuses a second
                    # Job of one name, and two compiles of one key would hold the pool's devices twice:
                    # the old Job goes before the new one starts.
                    delete_before_replace=True,
                    # Pulumi waits for the Job to complete; the Job's own deadline fires first.
                    custom_timeouts=pulumi.CustomTimeouts(create=compile_minutes, update=compile_minutes)))
            # Not after the Job: its pods wait for their key to be published (wait-for-graphs), so a
            # new key's rollout starts beside its compile, old pods serving meanwhile, and a running
            # or failed Job holds up no serving change. Pulumi waits for both parts.
            rollout = f"{deployment_deadline_minutes(settings, shape)}m"
            deployment = k8s.apps.v1.Deployment(
                serve_name, metadata=metadata(serve_name, workload_labels(SERVE, shape)),
                spec=serving_deployment_spec(settings, shape, args.image_ref, args.read_only_claim,
                                             args.read_write_claim, args.scheduler_name),
                opts=after(in_cluster, *accounts,
                           custom_timeouts=pulumi.CustomTimeouts(create=rollout, update=rollout)))
            labels = workload_labels(SERVE, shape)
            service = k8s.core.v1.Service(
                serve_name, metadata=metadata(serve_name, labels),
                spec={"type": "ClusterIP", "selector": labels,
                      "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]},
                opts=in_cluster)
            # Voluntary evictions (node drains, Karpenter) take one pod at a time; with one replica
            # a drain still proceeds instead of blocking forever.
            k8s.policy.v1.PodDisruptionBudget(
                serve_name, metadata=metadata(serve_name, labels),
                spec={"maxUnavailable": 1, "selector": {"matchLabels": labels}}, opts=in_cluster)
            k8s.autoscaling.v2.HorizontalPodAutoscaler(
                serve_name, metadata=metadata(serve_name, labels),
                spec=autoscaler_spec(settings, shape, serve_name),
                opts=after(in_cluster, deployment, *args.autoscaling_metrics))
            self.services[str(shape)] = service.metadata.name
        self.register_outputs({"services": self.services})
