"""`python -m planning`: the real stacks check clean, seeded defects are caught by name, the goldens are current.

Defects are seeded into a copy of a real rendering, never into the program: each test shows the
check fails on exactly that mistake. Renderings come from the session cache in conftest.
"""

import copy
import json
from pathlib import Path

import pytest

from common.image import NEURON_SDK_VERSION
from infra import versions
from infra.naming import (
    CAPACITY_TYPE_LABEL, HF_TOKEN_SECRET, HF_TOKEN_SECRET_KEY, NEURON_FAMILY_LABEL, NEURON_SCHEDULER_NAME,
    NEURON_TAINT_KEY, SERVE, SPOT, WORKLOAD_NAMESPACE, neuron_nodepool, workload_name,
)
from planning import REFRESH_COMMAND, checks, cli
from planning.checks.karpenter import CEL_FAMILY
from planning.checks.objects import HELM_RELEASE, NEURON_CHART
from planning.checks import published
from planning.checks.published import FAMILY as PUBLISHED_VERSIONS
from planning.offline import REPO_ROOT, run_program
from planning.render import render_files, write_plan
from planning.secrets import REDACTED, SECRET_MARKER_KEY, SECRET_MARKER_VALUE, is_secret

PLANS = REPO_ROOT / "plans"
# Seeded defects need one stack: reuse its cached rendering rather than running the program again.
DEV = pytest.mark.parametrize("stack", ["dev"], indirect=True)
SECRET = {SECRET_MARKER_KEY: SECRET_MARKER_VALUE, "value": "hf_abcdefghijklmnopqrstuvwxyz"}


def test_the_real_stacks_check_clean(rendering):
    assert checks.check(rendering) == []
    assert checks.report(rendering, []).startswith(f"{rendering.stack}: clean (")


def _tree(directory: Path) -> dict[str, str]:
    return {str(path.relative_to(directory)): path.read_text() for path in sorted(directory.rglob("*.yaml"))}


def test_the_committed_plans_are_current(rendering, tmp_path):
    fresh = _tree(write_plan(rendering, tmp_path))
    committed = _tree(PLANS / rendering.stack)
    stale = sorted(path for path in fresh.keys() | committed.keys() if fresh.get(path) != committed.get(path))
    assert not stale, f"plans/{rendering.stack} is stale ({', '.join(stale)}): run `{REFRESH_COMMAND}`"


def test_a_rejected_config_is_reported_in_one_line(monkeypatch, capsys):
    override = {"flux-neuron:shapes": ["1000x1000"]}
    monkeypatch.setattr(cli, "run_program", lambda stack: run_program(stack, override))
    assert cli.main(["--stack", "dev", "--check"]) == 1
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith("dev: config flux-neuron:shapes") and "'1000x1000'" in line


@DEV
def test_writing_a_plan_replaces_what_the_previous_one_left(rendering, tmp_path, monkeypatch, capsys):
    removed = tmp_path / "dev" / "kubernetes" / "job-flux-flux-compile-64x64.yaml"
    removed.parent.mkdir(parents=True)
    removed.write_text("a shape the config no longer has")
    monkeypatch.setattr(cli, "run_program", lambda stack: rendering)
    assert cli.main(["--stack", "dev", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"dev: wrote {tmp_path / 'dev'}\n"
    assert _tree(tmp_path / "dev") == render_files(rendering)


def _secret_values(value, inside_secret=False):
    """Every string Pulumi holds as (part of) a secret."""
    if is_secret(value):
        yield from _secret_values(value["value"], inside_secret=True)
    elif isinstance(value, str) and inside_secret:
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _secret_values(item, inside_secret)
    elif isinstance(value, list):
        for item in value:
            yield from _secret_values(item, inside_secret)


def test_rendered_files_are_repeatable_and_hold_no_secret_value(rendering):
    files = render_files(rendering)
    assert files == render_files(copy.deepcopy(rendering))
    assert {"resources.yaml", "outputs.yaml", "kubernetes/namespace-flux.yaml"} <= set(files)
    for name in rendering.secret_outputs:
        assert f"{name}: '{REDACTED}'" in files["outputs.yaml"]
    text = "".join(files.values())
    secrets = {secret for resource in rendering.resources for secret in _secret_values(resource.inputs)}
    assert [secret for secret in secrets if secret in text] == []
    assert SECRET_MARKER_VALUE not in text


JOB = "kubernetes:batch/v1:Job"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
SERVING = workload_name(SERVE, "")


def _messages(changed, check, baseline):
    """What `check` reports on the changed copy beyond what it reports on the rendering it came from."""
    before = set(checks.check(baseline))
    return [problem.message for problem in checks.check(changed) if problem.check == check and problem not in before]


def _first(rendering, type_, prefix=""):
    """The inputs of the first object of `type_` by name (of those named `prefix`...), so every run seeds the
    same one."""
    return min((r for r in rendering.of_type(type_) if r.name.startswith(prefix)), key=lambda r: r.name).inputs


def _seeded(rendering, type_, seed, prefix=""):
    """A copy of the rendering with `seed` applied to its first object of `type_` (named `prefix`...), and how
    the checks name that object."""
    changed = copy.deepcopy(rendering)
    obj = _first(changed, type_, prefix)
    seed(obj)
    metadata = obj["metadata"]
    return changed, f"{obj['kind']} {metadata['namespace']}/{metadata['name']}"


def _pod(job):
    return job["spec"]["template"]["spec"]


def _container(job):
    return _pod(job)["containers"][0]


def _dangling_claim(job):
    claim = next(v["persistentVolumeClaim"] for v in _pod(job)["volumes"] if "persistentVolumeClaim" in v)
    claim["claimName"] = "flux-graphs-typo"


def _wrong_scheduler(job):
    _pod(job)["schedulerName"] = "neuron-scheduler"


def _no_toleration(job):
    _pod(job)["tolerations"] = []


def _spot_only(job):
    # dev's one trn1 pool is on-demand: no NodePool launches Spot nodes of the family.
    _pod(job)["nodeSelector"][CAPACITY_TYPE_LABEL] = SPOT


def _env(job, variable):
    _container(job).setdefault("env", []).append(variable)


def _missing_secret(job):
    _env(job, {"name": "EXTRA", "valueFrom": {"secretKeyRef": {"name": "no-such-secret", "key": "token"}}})


def _missing_secret_key(job):
    _env(job, {"name": "EXTRA", "valueFrom": {"secretKeyRef": {"name": HF_TOKEN_SECRET, "key": "no-such-key"}}})


def _literal_token(job):
    _env(job, {"name": "API_TOKEN", "value": "hf_abcdefghijklmnopqrstuvwxyz"})


def _inlined_secret(job):
    _env(job, {"name": "MODEL_REVISION", "value": SECRET})


def _privileged(job):
    _container(job)["securityContext"]["privileged"] = True


def _no_limits(job):
    del _container(job)["resources"]["limits"]


def _misspelt_field(job):
    _container(job)["resource"] = _container(job).pop("resources")


def _host_network(job):
    _pod(job)["hostNetwork"] = True


def _host_path(job):
    _pod(job)["volumes"].append({"name": "docker", "hostPath": {"path": "/var/run/docker.sock"}})


def _mutable_tag(job):
    _container(job)["image"] = "public.ecr.aws/neuron/flux:latest"


@DEV
@pytest.mark.parametrize("seed, check, message", [
    (_misspelt_field, "Kubernetes schemas",
     "{job}: Additional properties are not allowed ('resource' was unexpected) at spec/template/spec/containers/0"),
    (_dangling_claim, "Cross-references",
     "{job}: PersistentVolumeClaim 'flux-graphs-typo' does not exist in namespace flux"),
    (_wrong_scheduler, "Cross-references",
     "{job}: schedulerName 'neuron-scheduler' is neither 'default-scheduler' "
     f"nor the Neuron scheduler '{NEURON_SCHEDULER_NAME}'"),
    (_no_toleration, "Cross-references", f"{{job}}: does not tolerate taint {NEURON_TAINT_KEY}:NoSchedule "
                                         "of NodePool '{pool}'"),
    (_spot_only, "Cross-references", "{job}: no NodePool launches nodes its node selection accepts"),
    (_missing_secret, "Cross-references", "{job}: Secret 'no-such-secret' does not exist in namespace flux"),
    (_missing_secret_key, "Cross-references", f"{{job}}: Secret '{HF_TOKEN_SECRET}' has no key 'no-such-key'"),
    (_literal_token, "Security posture",
     "{job} container '{container}': env API_TOKEN is a literal; take it from a secretKeyRef"),
    (_inlined_secret, "Security posture",
     "{job}: a secret value is written into the object (reference a Secret instead)"),
    (_privileged, "Security posture", "{job} container '{container}': runs privileged"),
    (_no_limits, "Security posture", "{job} container '{container}': no limits for cpu, memory"),
    (_host_network, "Security posture", "{job}: uses hostNetwork"),
    (_host_path, "Security posture", "{job}: mounts host path /var/run/docker.sock"),
    (_mutable_tag, "Security posture",
     "{job} container '{container}': image 'public.ecr.aws/neuron/flux:latest' is not pinned by digest"),
])
def test_a_seeded_pod_defect_fails_the_check_by_name(rendering, seed, check, message):
    """Seeded into the first serving Deployment: a Neuron pod, with the scheduler, tolerations and pools to get
    wrong."""
    changed, job = _seeded(rendering, DEPLOYMENT, seed, SERVING)
    original = _first(rendering, DEPLOYMENT, SERVING)
    expected = message.format(job=job, container=_container(original)["name"],
                              pool=neuron_nodepool(_pod(original)["nodeSelector"][NEURON_FAMILY_LABEL]))
    assert _messages(changed, check, rendering) == [expected]


@DEV
def test_the_neuron_scheduler_needs_the_release_that_installs_it(rendering):
    without_release = copy.deepcopy(rendering)
    without_release.resources = [r for r in rendering.resources if r.type != HELM_RELEASE
                                 or not r.inputs["chart"].endswith(NEURON_CHART)]
    job = _first(rendering, DEPLOYMENT, SERVING)["metadata"]
    expected = (f"Deployment {job['namespace']}/{job['name']}: schedulerName '{NEURON_SCHEDULER_NAME}' "
                "but no neuron-helm-chart release installs that scheduler")
    assert expected in _messages(without_release, "Cross-references", rendering)


@DEV
def test_a_secret_value_must_be_a_pulumi_secret_and_is_never_rendered(rendering):
    secret = f"kubernetes/secret-{WORKLOAD_NAMESPACE}-{HF_TOKEN_SECRET}.yaml"
    assert f"{HF_TOKEN_SECRET_KEY}: '[secret]'" in render_files(rendering)[secret]

    def plaintext(obj):
        obj["stringData"] = {HF_TOKEN_SECRET_KEY: "hf_abcdefghijklmnopqrstuvwxyz"}

    changed, where = _seeded(rendering, "kubernetes:core/v1:Secret", plaintext)
    assert _messages(changed, "Security posture", rendering) == [
        f"{where}: stringData.{HF_TOKEN_SECRET_KEY} is plaintext in the program (take it from a secret config value)"]


@DEV
def test_services_and_ingresses_must_reach_pods(rendering):
    def select_nothing(service):
        service["spec"]["selector"] = {"app": "nothing"}

    changed, service = _seeded(rendering, "kubernetes:core/v1:Service", select_nothing)
    assert _messages(changed, "Cross-references", rendering) == [
        f"{service}: selector {{'app': 'nothing'}} matches no pod"]

    def target_unnamed_port(service):
        service["spec"]["ports"][0]["targetPort"] = "no-such-port"

    changed, service = _seeded(rendering, "kubernetes:core/v1:Service", target_unnamed_port)
    assert _messages(changed, "Cross-references", rendering) == [
        f"{service}: targetPort 'no-such-port' is not a named port of the pods it selects"]

    def break_backends(ingress):
        first, second = ingress["spec"]["rules"][0]["http"]["paths"][:2]
        first["backend"]["service"]["name"] = "no-such-service"
        second["backend"]["service"]["port"] = {"number": 8081}

    changed, ingress = _seeded(rendering, "kubernetes:networking.k8s.io/v1:Ingress", break_backends)
    original = _first(rendering, "kubernetes:networking.k8s.io/v1:Ingress")
    second_service = original["spec"]["rules"][0]["http"]["paths"][1]["backend"]["service"]["name"]
    assert _messages(changed, "Cross-references", rendering) == [
        f"{ingress}: backend Service '{second_service}' has no port {{'number': 8081}}",
        f"{ingress}: backend Service 'no-such-service' does not exist",
    ]


@DEV
def test_an_iam_wildcard_action_fails_the_check(rendering):
    changed = copy.deepcopy(rendering)
    policy = changed.one("aws:iam/rolePolicy:RolePolicy", "graphs-csi-inline").inputs
    document = json.loads(policy["policy"])
    document["Statement"].append({"Sid": "Everything", "Effect": "Allow", "Action": "s3:*", "Resource": "*"})
    policy["policy"] = json.dumps(document)
    messages = _messages(changed, "IAM policies", rendering)
    assert "RolePolicy graphs-csi-inline: Everything: allows every action (s3:*)" in messages
    assert any(message.startswith("RolePolicy graphs-csi-inline: Everything: RESOURCE_STAR") for message in messages)


@DEV
def test_an_invalid_karpenter_field_fails_the_check(rendering):
    changed = copy.deepcopy(rendering)
    spec = changed.one("kubernetes:karpenter.sh/v1:NodePool", "karpenter-cpu").inputs["spec"]
    spec["disruption"]["consolidationPolicy"] = "Sometimes"
    [message] = _messages(changed, "Karpenter CRD schemas", rendering)
    assert message.startswith("NodePool cpu: 'Sometimes' is not one of ['WhenEmpty', ")
    assert message.endswith(" at spec/disruption/consolidationPolicy")


@DEV
def test_the_cli_reports_problems_grouped_by_check_and_exits_nonzero(rendering, monkeypatch, capsys):
    def two_defects(job):
        _dangling_claim(job)
        _privileged(job)

    changed, job = _seeded(rendering, JOB, two_defects)
    container = _container(_first(rendering, JOB))["name"]
    monkeypatch.setattr(cli, "run_program", lambda stack: changed)
    assert cli.main(["--stack", "dev", "--check"]) == 1
    printed = capsys.readouterr().out
    assert printed.startswith("dev: 2 problem(s) (")
    assert f"\n  Cross-references:\n    - {job}: PersistentVolumeClaim 'flux-graphs-typo'" in printed
    assert f"\n  Security posture:\n    - {job} container '{container}': runs privileged\n" in printed


NODE_CLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"
NODEPOOL = "kubernetes:karpenter.sh/v1:NodePool"


def _restricted_tag(node_class):
    node_class["spec"]["tags"] = {"eks:eks-cluster-name": "flux-dev"}


def _alias_with_another_term(node_class):
    node_class["spec"]["amiSelectorTerms"].append({"id": "ami-0123456789abcdef0"})


def _schedule_without_duration(nodepool):
    nodepool["spec"]["disruption"]["budgets"] = [{"nodes": "0", "schedule": "0 9 * * mon-fri"}]


def _restricted_label_domain(nodepool):
    nodepool["spec"]["template"]["spec"]["requirements"][0]["key"] = "karpenter.sh/team"


def _not_an_integer(nodepool):
    nodepool["spec"]["template"]["spec"]["requirements"].append(
        {"key": "karpenter.k8s.aws/instance-cpu", "operator": "Gt", "values": ["eight"]})


@DEV
@pytest.mark.parametrize("type_, name, seed, message", [
    (NODE_CLASS, "karpenter-default", _restricted_tag,
     "EC2NodeClass default: tag contains a restricted tag matching eks:eks-cluster-name at spec/tags"),
    (NODE_CLASS, "karpenter-default", _alias_with_another_term,
     "EC2NodeClass default: 'alias' is mutually exclusive, cannot be set with a combination of other "
     "amiSelectorTerms at spec/amiSelectorTerms"),
    (NODEPOOL, "karpenter-cpu", _schedule_without_duration,
     "NodePool cpu: 'schedule' must be set with 'duration' at spec/disruption/budgets"),
    (NODEPOOL, "karpenter-cpu", _restricted_label_domain,
     'NodePool cpu: label domain "karpenter.sh" is restricted at spec/template/spec/requirements/0/key'),
])
def test_a_karpenter_object_the_openapi_schema_accepts_fails_its_cel_rules(rendering, type_, name, seed, message):
    changed = copy.deepcopy(rendering)
    seed(changed.one(type_, name).inputs)
    # Only CEL catches it: the OpenAPI part of the same CRD has nothing to say.
    assert _messages(changed, "Karpenter CRD schemas", rendering) == []
    assert _messages(changed, CEL_FAMILY, rendering) == [message]


@DEV
def test_a_cel_rule_that_cannot_be_evaluated_is_a_problem(rendering):
    changed = copy.deepcopy(rendering)
    _not_an_integer(changed.one(NODEPOOL, "karpenter-cpu").inputs)
    assert _messages(changed, "Karpenter CRD schemas", rendering) == []
    [message] = _messages(changed, CEL_FAMILY, rendering)
    assert message.startswith("NodePool cpu: could not evaluate: self.all(x, (x.operator == 'Gt' ")
    assert "invalid literal for int() with base 10: StringType('eight')" in message
    assert message.endswith(") at spec/template/spec/requirements")


@DEV
def test_an_ami_alias_whose_neuron_driver_is_too_old_fails_the_check(rendering):
    changed = copy.deepcopy(rendering)
    changed.one(NODE_CLASS, "karpenter-default").inputs["spec"]["amiSelectorTerms"] = [{"alias": "al2023@v20250915"}]
    assert _messages(changed, PUBLISHED_VERSIONS, rendering) == [
        "EC2NodeClass default: AMI alias 'al2023@v20250915' ships Neuron driver 2.23.9.0, older than the 2.29.0.0 "
        f"that Neuron SDK {NEURON_SDK_VERSION} needs (first release with it: al2023@v20260714)"]


@pytest.mark.parametrize("stack", ["trn2"], indirect=True)
def test_an_ami_alias_whose_driver_predates_a_launched_family_fails_the_check(rendering, monkeypatch):
    """The families come from the NodePools: the trn2 stack's AMI must drive trn2 (a driver of Neuron 2.21 or later);
    an SDK old enough for the AMI of v20241205 stands in, as no pinned SDK would accept it."""
    monkeypatch.setattr(published, "required_neuron_drivers", lambda: {NEURON_SDK_VERSION: "2.18.20.0"})
    changed = copy.deepcopy(rendering)
    changed.one(NODE_CLASS, "karpenter-default").inputs["spec"]["amiSelectorTerms"] = [{"alias": "al2023@v20241205"}]
    assert _messages(changed, PUBLISHED_VERSIONS, rendering) == [
        "EC2NodeClass default: AMI alias 'al2023@v20241205' ships Neuron driver 2.18.20.0, older than 2.19.64.0, "
        "the first that supports trn2 (neuron-driver-families.txt)"]


def _neuron_release(rendering):
    [release] = [r for r in rendering.of_type(HELM_RELEASE) if r.inputs["chart"].endswith(NEURON_CHART)]
    return release


@DEV
@pytest.mark.parametrize("tag, problem", [
    ("v1.33.14-eks-1-33-32", "kube-scheduler tag 'v1.33.14-eks-1-33-32' is in no published EKS Distro release "
                             "(kube-scheduler-tags.txt); the latest published 1.33 tag is 'v1.33.13-eks-1-33-31'"),
    ("v1.34.9-eks-1-34-21", "kube-scheduler tag 'v1.34.9-eks-1-34-21' is not a Kubernetes 1.33 release; "
                            "the latest published 1.33 tag is 'v1.33.13-eks-1-33-31'"),
])
def test_an_unpublished_kube_scheduler_tag_fails_the_check(rendering, tag, problem):
    changed = copy.deepcopy(rendering)
    release = _neuron_release(changed)
    release.inputs["values"]["scheduler"]["customScheduler"]["image"]["tag"] = tag
    assert _messages(changed, PUBLISHED_VERSIONS, rendering) == [f"Release {release.name}: {problem}"]


@DEV
def test_the_kube_scheduler_tags_pinned_for_other_minors_are_checked_too(rendering, monkeypatch):
    monkeypatch.setitem(versions.KUBERNETES_RELEASES["1.34"], "kube-scheduler", "v1.34.11-eks-1-34-24")
    assert [p.message for p in checks.check(rendering) if p.check == PUBLISHED_VERSIONS] == [
        "infra/versions.py KUBERNETES_RELEASES['1.34']: kube-scheduler tag 'v1.34.11-eks-1-34-24' is in no "
        "published EKS Distro release (kube-scheduler-tags.txt); the latest published 1.34 tag is "
        "'v1.34.9-eks-1-34-21'"]


@DEV
def test_a_neuron_chart_without_published_values_fails_the_check(rendering):
    changed = copy.deepcopy(rendering)
    release = _neuron_release(changed)
    release.inputs["version"] = "1.5.0"
    assert _messages(changed, PUBLISHED_VERSIONS, rendering) == [
        f"Release {release.name}: neuron-helm-chart 1.5.0 has no published values (neuron-helm-chart-values.txt); "
        "published: 1.9.0"]


@DEV
def test_a_mountpoint_addon_without_the_shared_pod_fix_fails_the_check(rendering):
    changed = copy.deepcopy(rendering)
    [addon] = [r for r in changed.of_type("aws:eks/addon:Addon")
               if r.inputs["addonName"] == "aws-mountpoint-s3-csi-driver"]
    addon.inputs["addonVersion"] = "v2.2.2-eksbuild.1"
    assert _messages(changed, PUBLISHED_VERSIONS, rendering) == [
        f"Addon {addon.name}: aws-mountpoint-s3-csi-driver v2.2.2-eksbuild.1 predates {first}, the first release "
        f"with the fix {fix} (mountpoint-s3-csi-driver-releases.txt)"
        for first, fix in (("v2.3.0", "shared-pod-attachment-wait"), ("v2.5.0", "workload-first-eviction"))]


@DEV
@pytest.mark.parametrize("family, accepted", [("m7i", True), ("r7i", True), ("m5", False), ("t3", False)])
def test_a_job_selecting_an_instance_family_runs_where_the_cpu_pools_category_and_generation_allow_it(
        rendering, family, accepted):
    """The cpu NodePool lists no families: Karpenter launches those its category (c, m, r) and generation (> 5)
    requirements allow, which is what the cross-reference check derives from a family's name."""
    changed, job = _seeded(rendering, JOB, lambda obj: _pod(obj)["nodeSelector"].update(
        {"karpenter.k8s.aws/instance-family": family}))
    expected = [] if accepted else [f"{job}: no NodePool launches nodes its node selection accepts"]
    assert _messages(changed, "Cross-references", rendering) == expected
