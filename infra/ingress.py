"""One Application Load Balancer in front of every shape: the AWS Load Balancer Controller (Pod
Identity, on the system nodes) and one Ingress routing /flux/<shape>/... to that shape's Service.

Internet-facing only with TLS (HTTPS on 443, HTTP redirects to it); without a certificate the ALB
is internal. Either way it lives in the public subnets, which hold no pods: the serving pods'
NetworkPolicy admits exactly those subnets' addresses (target type ip)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra import iam, versions
from infra.config import IngressSettings
from infra.iam import CONDITIONS, OMITTED, Difference
from infra.naming import (
    INGRESS_NAME, LOAD_BALANCER_CONTROLLER_SERVICE_ACCOUNT, SYSTEM_NAMESPACE, SYSTEM_NODE_LABEL, endpoint_path,
)
from common import endpoints
from infra.iam import CONDITIONS, OMITTED, Difference
from infra.options import after, children
from infra.pods import PROBE_PERIOD_SECONDS

CLUSTER_TAG = "elbv2.k8s.aws/cluster"
# TLS 1.2 and 1.3 only.
SSL_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"
# The ALB's maximum idle timeout.
MAX_IDLE_TIMEOUT_SECONDS = 4000
# The ALB probes each pod's /readyz as often as the kubelet does and gives up after 2 failures
# (20 s), before the kubelet's 3 (30 s) take the pod out of the Service's endpoints: a pod whose
# generations keep failing loses its ALB traffic first. 2 successes bring it back. A probe is
# answered by the event loop, never queued behind a generation, so 5 s is ample.
HEALTHCHECK_INTERVAL_SECONDS = PROBE_PERIOD_SECONDS
HEALTHCHECK_TIMEOUT_SECONDS = 5
HEALTHCHECK_UNHEALTHY_THRESHOLD = 2
HEALTHCHECK_HEALTHY_THRESHOLD = 2

# Read-only calls: no resource-level permissions, "*" is the only valid resource.
DESCRIBE_ACTIONS = (
    "ec2:DescribeAccountAttributes", "ec2:DescribeAddresses", "ec2:DescribeAvailabilityZones",
    "ec2:DescribeInternetGateways", "ec2:DescribeVpcs", "ec2:DescribeVpcPeeringConnections",
    "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "ec2:DescribeInstances",
    "ec2:DescribeNetworkInterfaces", "ec2:DescribeTags", "ec2:DescribeRouteTables",
    "elasticloadbalancing:DescribeLoadBalancers", "elasticloadbalancing:DescribeLoadBalancerAttributes",
    "elasticloadbalancing:DescribeListeners", "elasticloadbalancing:DescribeListenerCertificates",
    "elasticloadbalancing:DescribeSSLPolicies", "elasticloadbalancing:DescribeRules",
    "elasticloadbalancing:DescribeTargetGroups", "elasticloadbalancing:DescribeTargetGroupAttributes",
    "elasticloadbalancing:DescribeTargetHealth", "elasticloadbalancing:DescribeTags",
    "elasticloadbalancing:DescribeTrustStores", "elasticloadbalancing:DescribeListenerAttributes",
    "elasticloadbalancing:DescribeCapacityReservation", "acm:ListCertificates",
)
SECURITY_GROUP_INGRESS_ACTIONS = ("ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupIngress")
CREATE_ACTIONS = ("elasticloadbalancing:CreateLoadBalancer", "elasticloadbalancing:CreateTargetGroup")
MODIFY_OWNED_ACTIONS = (
    "elasticloadbalancing:ModifyLoadBalancerAttributes", "elasticloadbalancing:SetIpAddressType",
    "elasticloadbalancing:SetSecurityGroups", "elasticloadbalancing:SetSubnets",
    "elasticloadbalancing:DeleteLoadBalancer", "elasticloadbalancing:ModifyTargetGroup",
    "elasticloadbalancing:ModifyTargetGroupAttributes", "elasticloadbalancing:DeleteTargetGroup",
    "elasticloadbalancing:ModifyListenerAttributes", "elasticloadbalancing:ModifyCapacityReservation",
)
TAG_ACTIONS = ("ec2:CreateTags", "ec2:DeleteTags", "elasticloadbalancing:AddTags", "elasticloadbalancing:RemoveTags")

# How controller_policy differs from the controller's official iam_policy.json (planning/data/official/),
# beyond resources narrowed to this region, account and VPC. Checked by tests/planning/test_official_iam.py.
OFFICIAL_POLICY_DIFFERENCES = (
    Difference(OMITTED, ("wafv2:GetWebACL", "wafv2:GetWebACLForResource", "wafv2:AssociateWebACL",
                         "wafv2:DisassociateWebACL", "waf-regional:GetWebACL", "waf-regional:GetWebACLForResource",
                         "waf-regional:AssociateWebACL", "waf-regional:DisassociateWebACL",
                         "elasticloadbalancing:SetWebAcl"),
               "WAF is switched off in the chart values (enableWaf, enableWafv2: false)"),
    Difference(OMITTED, ("shield:GetSubscriptionState", "shield:DescribeProtection", "shield:CreateProtection",
                         "shield:DeleteProtection"),
               "Shield is switched off in the chart values (enableShield: false)"),
    Difference(OMITTED, ("cognito-idp:DescribeUserPoolClient",),
               "the Ingress authenticates no one through Cognito (no alb.ingress.kubernetes.io/auth-type)"),
    Difference(OMITTED, ("iam:ListServerCertificates", "iam:GetServerCertificate"),
               "certificates come from ACM by ARN (ingress.certificateArn), never from IAM"),
    Difference(OMITTED, ("ec2:GetCoipPoolUsage", "ec2:DescribeCoipPools"),
               "no Outposts customer-owned IP pools (alb.ingress.kubernetes.io/customer-owned-ipv4-pool)"),
    Difference(OMITTED, ("ec2:DescribeIpamPools", "elasticloadbalancing:ModifyIpPools"),
               "no IPAM pools for load balancer addresses (alb.ingress.kubernetes.io/ipam-ipv4-pool-id)"),
    Difference(CONDITIONS, DESCRIBE_ACTIONS, "only in this region (aws:RequestedRegion)"),
    Difference(CONDITIONS, SECURITY_GROUP_INGRESS_ACTIONS + ("ec2:DeleteSecurityGroup",),
               "ingress rules only on security groups of this cluster's VPC (ec2:Vpc), which include the node "
               "groups the controller opens to its load balancers; deletion only of this cluster's security groups"),
    Difference(CONDITIONS, CREATE_ACTIONS + MODIFY_OWNED_ACTIONS + TAG_ACTIONS,
               f"the {CLUSTER_TAG} tag must name this cluster (StringEquals), where the official policy accepts any "
               "value (Null: false): the controller cannot create, change or tag another cluster's load balancers, "
               "target groups or security groups"),
)


def controller_policy(cluster_name: str, region: str, account: str, vpc_id: str) -> dict:
    """The controller's official v2.14.1 policy, less what this program does not use and narrowed to this
    region, account, VPC and the resources it tags as this cluster's (OFFICIAL_POLICY_DIFFERENCES)."""
    ec2 = f"arn:aws:ec2:{region}:{account}"
    elb = f"arn:aws:elasticloadbalancing:{region}:{account}"
    load_balancers, target_groups = f"{elb}:loadbalancer/app/*/*", f"{elb}:targetgroup/*/*"
    # IAM lists listener types of both kinds as alternatives and parliament wants each named.
    listeners = [f"{elb}:listener/{kind}/*/*/*" for kind in ("app", "net")]
    rules = [f"{elb}:listener-rule/{kind}/*/*/*" for kind in ("app", "net")]
    security_groups, vpc = f"{ec2}:security-group/*", f"{ec2}:vpc/{vpc_id}"
    requested = {f"aws:RequestTag/{CLUSTER_TAG}": cluster_name}
    owned = {f"aws:ResourceTag/{CLUSTER_TAG}": cluster_name}
    untagging = {"Null": {f"aws:RequestTag/{CLUSTER_TAG}": "true"}}
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "CreateElbServiceLinkedRole", "Effect": "Allow", "Action": "iam:CreateServiceLinkedRole",
         "Resource": f"arn:aws:iam::{account}:role/aws-service-role/elasticloadbalancing.amazonaws.com/"
                     "AWSServiceRoleForElasticLoadBalancing",
         "Condition": {"StringEquals": {"iam:AWSServiceName": "elasticloadbalancing.amazonaws.com"}}},
        {"Sid": "DescribeNetworkAndLoadBalancers", "Effect": "Allow", "Action": list(DESCRIBE_ACTIONS),
         "Resource": "*", "Condition": {"StringEquals": {"aws:RequestedRegion": region}}},
        {"Sid": "ReadVpcSecurityGroups", "Effect": "Allow", "Action": "ec2:GetSecurityGroupsForVpc",
         "Resource": vpc},
        {"Sid": "ReadCertificates", "Effect": "Allow", "Action": "acm:DescribeCertificate",
         "Resource": f"arn:aws:acm:{region}:{account}:certificate/*"},
        # The node security groups are not the controller's: it opens them to the load balancer's.
        {"Sid": "OpenSecurityGroupsInTheVpc", "Effect": "Allow", "Action": list(SECURITY_GROUP_INGRESS_ACTIONS),
         "Resource": security_groups, "Condition": {"ArnEquals": {"ec2:Vpc": vpc}}},
        {"Sid": "CreateSecurityGroupsInTheVpc", "Effect": "Allow", "Action": "ec2:CreateSecurityGroup",
         "Resource": [vpc, security_groups]},
        {"Sid": "TagNewSecurityGroups", "Effect": "Allow", "Action": "ec2:CreateTags", "Resource": security_groups,
         "Condition": {"StringEquals": {"ec2:CreateAction": "CreateSecurityGroup", **requested}}},
        {"Sid": "RetagOwnedSecurityGroups", "Effect": "Allow", "Action": ["ec2:CreateTags", "ec2:DeleteTags"],
         "Resource": security_groups, "Condition": {"StringEquals": owned, **untagging}},
        {"Sid": "DeleteOwnedSecurityGroups", "Effect": "Allow", "Action": "ec2:DeleteSecurityGroup",
         "Resource": security_groups, "Condition": {"StringEquals": owned}},
        {"Sid": "CreateTaggedLoadBalancers", "Effect": "Allow", "Action": list(CREATE_ACTIONS),
         "Resource": [load_balancers, target_groups], "Condition": {"StringEquals": requested}},
        # Listeners and rules live on the load balancers above (which CreateListener names).
        {"Sid": "ManageListenersAndRules", "Effect": "Allow",
         "Action": ["elasticloadbalancing:CreateListener", "elasticloadbalancing:DeleteListener",
                    "elasticloadbalancing:CreateRule", "elasticloadbalancing:DeleteRule",
                    "elasticloadbalancing:ModifyListener", "elasticloadbalancing:AddListenerCertificates",
                    "elasticloadbalancing:RemoveListenerCertificates", "elasticloadbalancing:ModifyRule",
                    "elasticloadbalancing:SetRulePriorities"],
         "Resource": [load_balancers, *listeners, *rules]},
        {"Sid": "RetagOwnedLoadBalancers", "Effect": "Allow",
         "Action": ["elasticloadbalancing:AddTags", "elasticloadbalancing:RemoveTags"],
         "Resource": [load_balancers, target_groups], "Condition": {"StringEquals": owned, **untagging}},
        # The controller tags the listeners and rules it creates.
        {"Sid": "TagListenersAndRules", "Effect": "Allow",
         "Action": ["elasticloadbalancing:AddTags", "elasticloadbalancing:RemoveTags"],
         "Resource": [*listeners, *rules]},
        {"Sid": "ModifyOwnedLoadBalancers", "Effect": "Allow", "Action": list(MODIFY_OWNED_ACTIONS),
         "Resource": [load_balancers, target_groups, *listeners], "Condition": {"StringEquals": owned}},
        {"Sid": "TagNewLoadBalancers", "Effect": "Allow", "Action": "elasticloadbalancing:AddTags",
         "Resource": [load_balancers, target_groups],
         "Condition": {"StringEquals": {"elasticloadbalancing:CreateAction": ["CreateTargetGroup",
                                                                               "CreateLoadBalancer"],
                                        **requested}}},
        {"Sid": "RegisterTargets", "Effect": "Allow",
         "Action": ["elasticloadbalancing:RegisterTargets", "elasticloadbalancing:DeregisterTargets"],
         "Resource": target_groups},
    ]}


def chart_values(cluster_name: str, region: str, vpc_id: str) -> dict:
    return {
        "clusterName": cluster_name,
        "region": region,
        "vpcId": vpc_id,
        "serviceAccount": {"create": True, "name": LOAD_BALANCER_CONTROLLER_SERVICE_ACCOUNT},
        "nodeSelector": SYSTEM_NODE_LABEL,
        "replicaCount": 2,
        # Only Ingresses here: leave Services of type LoadBalancer, WAF, Shield alone (and unpermitted).
        "enableServiceMutatorWebhook": False,
        "enableShield": False,
        "enableWaf": False,
        "enableWafv2": False,
    }


def rewrite_transform(shape: object) -> str:
    """ALB URL rewrite: /flux/<shape>/generate reaches the server as /generate, /flux/<shape> as /."""
    return json.dumps([{"type": "url-rewrite", "urlRewriteConfig": {
        "rewrites": [{"regex": f"^{endpoint_path(shape)}/?(.*)$", "replace": "/$1"}]}}])


def url_scheme(settings: IngressSettings) -> str:
    return "https" if settings.certificate_arn else "http"


def ingress_annotations(services: dict[str, str], settings: IngressSettings, request_timeout_seconds: int,
                        subnet_ids: list[str]) -> dict:
    annotations = {
        "alb.ingress.kubernetes.io/scheme": "internal" if settings.internal else "internet-facing",
        # The public subnets, whatever the scheme: no pod has an address there, so the serving
        # pods' NetworkPolicy can admit these subnets and nothing else of the VPC.
        "alb.ingress.kubernetes.io/subnets": ",".join(subnet_ids),
        # Straight to pod IPs: the ALB sees each pod's readiness, no NodePort hop.
        "alb.ingress.kubernetes.io/target-type": "ip",
        # Readiness, not liveness: a pod that is up but failing (serving/health.py) gets no traffic.
        "alb.ingress.kubernetes.io/healthcheck-path": endpoints.READYZ,
        "alb.ingress.kubernetes.io/healthcheck-interval-seconds": str(HEALTHCHECK_INTERVAL_SECONDS),
        "alb.ingress.kubernetes.io/healthcheck-timeout-seconds": str(HEALTHCHECK_TIMEOUT_SECONDS),
        "alb.ingress.kubernetes.io/unhealthy-threshold-count": str(HEALTHCHECK_UNHEALTHY_THRESHOLD),
        "alb.ingress.kubernetes.io/healthy-threshold-count": str(HEALTHCHECK_HEALTHY_THRESHOLD),
        "alb.ingress.kubernetes.io/success-codes": "200",
        # A generation may take the whole request timeout; the ALB's default idle timeout is 60 s.
        "alb.ingress.kubernetes.io/load-balancer-attributes":
            f"idle_timeout.timeout_seconds={min(MAX_IDLE_TIMEOUT_SECONDS, request_timeout_seconds + 30)}",
        **{f"alb.ingress.kubernetes.io/transforms.{service}": rewrite_transform(shape)
           for shape, service in services.items()},
    }
    if settings.certificate_arn:
        annotations.update({
            "alb.ingress.kubernetes.io/certificate-arn": settings.certificate_arn,
            # Port 80 only answers with a redirect to 443: every rule of the HTTP listener becomes one.
            "alb.ingress.kubernetes.io/listen-ports": json.dumps([{"HTTP": 80}, {"HTTPS": 443}]),
            "alb.ingress.kubernetes.io/ssl-redirect": "443",
            "alb.ingress.kubernetes.io/ssl-policy": SSL_POLICY,
        })
    else:
        # Config refuses an internet-facing ALB without a certificate: plain HTTP stays inside the VPC.
        annotations["alb.ingress.kubernetes.io/listen-ports"] = json.dumps([{"HTTP": 80}])
    return annotations


def ingress_spec(services: dict[str, str]) -> dict:
    return {"ingressClassName": "alb", "rules": [{"http": {"paths": [
        {"path": endpoint_path(shape), "pathType": "Prefix",
         "backend": {"service": {"name": service, "port": {"name": "http"}}}}
        for shape, service in services.items()]}}]}


@dataclass
class LoadBalancerControllerArgs:
    cluster_name: pulumi.Input[str]
    region: str
    vpc_id: pulumi.Input[str]


class LoadBalancerController(pulumi.ComponentResource):
    """The controller, up before any pod of the workload namespace is created: its webhook injects
    the ALB readiness gates there and, failing closed, admits no pod of that namespace without it.
    Give it the cluster's Kubernetes provider and what its release waits for through `opts`."""

    release: k8s.helm.v3.Release

    def __init__(self, name: str, args: LoadBalancerControllerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("flux-neuron:infra:LoadBalancerController", name, None, opts)
        account = aws.get_caller_identity().account_id
        controller_role = iam.pod_identity_role(
            name, parent=self,
            inline_policy=pulumi.Output.all(args.cluster_name, args.vpc_id).apply(
                lambda values: json.dumps(controller_policy(values[0], args.region, account, values[1]))))
        association = iam.pod_identity_association(
            name, role_arn=controller_role.arn, cluster_name=args.cluster_name,
            namespace=SYSTEM_NAMESPACE, service_account=LOAD_BALANCER_CONTROLLER_SERVICE_ACCOUNT, parent=self)
        self.release = k8s.helm.v3.Release(
            name, name="aws-load-balancer-controller", chart="aws-load-balancer-controller",
            repository_opts={"repo": versions.AWS_LOAD_BALANCER_CONTROLLER_CHART_REPO},
            version=versions.AWS_LOAD_BALANCER_CONTROLLER_VERSION, namespace=SYSTEM_NAMESPACE,
            values=pulumi.Output.all(args.cluster_name, args.vpc_id).apply(
                lambda values: chart_values(values[0], args.region, values[1])),
            opts=after(children(self, opts), association))
        self.register_outputs({})


@dataclass
class IngressArgs:
    namespace: pulumi.Input[str]
    services: dict[str, pulumi.Output[str]]  # shape -> Service name
    settings: IngressSettings
    request_timeout_seconds: int
    public_subnet_ids: pulumi.Input[list[str]]
    controller: LoadBalancerController


class Ingress(pulumi.ComponentResource):
    """Give it the cluster's Kubernetes provider through `opts`."""

    endpoints: pulumi.Output[dict[str, str]]
    example_request: pulumi.Output[str]

    def __init__(self, name: str, args: IngressArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("flux-neuron:infra:Ingress", name, None, opts)
        services = pulumi.Output.all(**args.services)
        # Created after the controller (its webhook validates Ingresses) and so deleted before it:
        # the controller removes the ALB when the Ingress goes.
        ingress = k8s.networking.v1.Ingress(
            name,
            metadata={"name": INGRESS_NAME, "namespace": args.namespace,
                      "annotations": pulumi.Output.all(services, args.public_subnet_ids).apply(
                          lambda values: ingress_annotations(values[0], args.settings, args.request_timeout_seconds,
                                                             values[1]))},
            spec=services.apply(ingress_spec),
            opts=after(children(self, opts), args.controller.release))

        scheme = url_scheme(args.settings)
        hostname = ingress.status.apply(lambda status: status.load_balancer.ingress[0].hostname)
        self.endpoints = hostname.apply(
            lambda host: {shape: f"{scheme}://{host}{endpoint_path(shape)}" for shape in args.services})
        first = next(iter(args.services))
        self.example_request = self.endpoints.apply(lambda urls: (
            f"curl -sS -X POST {urls[first]}{endpoints.GENERATE} -H 'Content-Type: application/json' "
            # No steps: the served model's family default (28 for FLUX.1-dev, 4 for FLUX.1-schnell).
            "-d '{\"prompt\": \"a lighthouse at dawn, watercolor\", \"seed\": 1}'"
            # jq -e: an error answer (no image) stops before flux.png is written.
            " | jq -er .image > flux.b64 && base64 -d flux.b64 > flux.png"))
        self.register_outputs({"endpoints": self.endpoints, "example_request": self.example_request})
