"""What compiles and serves: the stack's weights Job (named by the weights key) that publishes the sharded
checkpoint, and per configured shape a graphs Job (named by the shape's artifact key) that publishes its graphs,
and a Deployment whose pods start once both are published (gated until then: infra/activation.py), with its
Service, PodDisruptionBudget and HorizontalPodAutoscaler (their specs: infra.pods). Shared by all shapes: the HF
token Secret and one ServiceAccount per role. The autoscalers' metric comes from infra.monitoring.

None of these is awaited (NOT_AWAITED): `pulumi up` creates them, the API server validates them, and it returns;
the compiles go on for hours and the serving pods start when they are done, with no second `up`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.naming import (
    COMPILE, COMPILE_SERVICE_ACCOUNT, HF_TOKEN_SECRET, HF_TOKEN_SECRET_KEY, NOT_AWAITED, SERVE, SERVE_SERVICE_ACCOUNT,
    workload_labels, workload_name,
)
from infra.options import after, children
from infra.pods import (
    COMPILE_JOB_IMAGE_FIELDS, WEIGHTS_LABELS, WorkloadSettings, autoscaler_spec, compile_job_name, compile_job_spec,
    serving_deployment_spec, weights_job_name, weights_job_spec,
)
from common.shapes import Shape

# A replaced Job (its pod template changed beyond its key, or `pulumi up --replace`) is deleted, not awaited
# (NOT_AWAITED), before its successor of the same name is created: deleted in the background, the Job object goes
# at once and its pod after it, so the new Job's name is free.
JOB_ANNOTATIONS = {**NOT_AWAITED, "pulumi.com/deletionPropagationPolicy": "background"}


@dataclass
class WorkloadsArgs:
    shapes: Sequence[Shape]
    settings: WorkloadSettings
    image_ref: pulumi.Input[str]
    hf_token: pulumi.Output[str] | None  # a secret Output, deployed only if settings.model.needs_hf_token
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

        def metadata(object_name: str, labels: dict[str, str] | None = None, annotations: dict | None = None) -> dict:
            return {"name": object_name, "namespace": args.namespace, **({"labels": labels} if labels else {}),
                    **({"annotations": annotations} if annotations else {})}

        # Only when a Job reads a gated repository (the config requires the token then); serving pods never mount it.
        secrets = [k8s.core.v1.Secret(
            HF_TOKEN_SECRET, metadata=metadata(HF_TOKEN_SECRET), type="Opaque",
            string_data={HF_TOKEN_SECRET_KEY: args.hf_token}, opts=in_cluster)] if settings.model.needs_hf_token else []
        if args.hf_token is not None and not secrets:
            pulumi.log.warn(f"config hfToken is set, but {settings.model.id} and its adapters are not gated "
                            "(model.gated false): no pod receives it", self)
        accounts = [
            k8s.core.v1.ServiceAccount(account, metadata=metadata(account), automount_service_account_token=False,
                                       opts=in_cluster)
            for account in (COMPILE_SERVICE_ACCOUNT, SERVE_SERVICE_ACCOUNT)
        ]

        def publishing_job(job_name: str, labels: dict[str, str], spec: dict) -> None:
            # Named by its key: a new key is a new Job (the old one is deleted at the end of the update), and an
            # image that changed nothing of the key changes nothing here. A Job is still replaced under its name
            # when its pod template changes beyond the key (resources, deadline) or on `pulumi up --replace`:
            # Kubernetes refuses a second Job of one name, and two compiles of one key would run twice, so the old
            # Job goes before the new one starts.
            k8s.batch.v1.Job(job_name, metadata=metadata(job_name, labels, JOB_ANNOTATIONS), spec=spec,
                             opts=after(in_cluster, *secrets, *accounts, ignore_changes=list(COMPILE_JOB_IMAGE_FIELDS),
                                        delete_before_replace=True))

        weights_name = weights_job_name(settings)
        publishing_job(weights_name, WEIGHTS_LABELS,
                       weights_job_spec(settings, args.image_ref, args.read_write_claim))
        self.services = {}
        for shape in args.shapes:
            compile_name, serve_name = compile_job_name(settings, shape), workload_name(SERVE, shape)
            publishing_job(compile_name, workload_labels(COMPILE, shape),
                           compile_job_spec(settings, shape, args.image_ref, args.read_write_claim,
                                            args.scheduler_name))
            # Not after the Jobs: its pods stay gated until their key is published, so a new key's rollout starts
            # beside its compile, old pods serving meanwhile, and a running or failed Job holds up no serving change.
            labels = workload_labels(SERVE, shape)
            deployment = k8s.apps.v1.Deployment(
                serve_name, metadata=metadata(serve_name, labels, NOT_AWAITED),
                spec=serving_deployment_spec(settings, shape, args.image_ref, args.read_only_claim,
                                             args.scheduler_name),
                opts=after(in_cluster, *accounts))
            # Not awaited either: pulumi-kubernetes would wait for the Service to have endpoints, which gated pods
            # do not have.
            service = k8s.core.v1.Service(
                serve_name, metadata=metadata(serve_name, labels, NOT_AWAITED),
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
