"""`infra.plan`: the real stacks check clean, seeded defects are caught by name, the goldens are current.

Defects are seeded into a copy of a real rendering, never into the program: each test shows the
check fails on exactly that mistake. Renderings come from the session cache in conftest.
"""

import copy
import json
from pathlib import Path

import pytest

from infra import plan
from infra.naming import NEURON_SCHEDULER_NAME, NEURON_TAINT_KEY, WORKLOAD_NAMESPACE, neuron_nodepool
from infra.offline import REPO_ROOT, Registered

PLANS = REPO_ROOT / "plans"
# Seeded defects need one stack: reuse its cached rendering rather than running the program again.
DEV = pytest.mark.parametrize("stack", ["dev"], indirect=True)
SECRET = {plan.SECRET_SIG_KEY: plan.SECRET_SIG, "value": "hf_abcdefghijklmnopqrstuvwxyz"}


def test_the_real_stacks_check_clean(rendering):
    assert plan.check(rendering) == []
    assert plan.report(rendering, []).startswith(f"{rendering.stack}: clean (")


def _tree(directory: Path) -> dict[str, str]:
    return {str(path.relative_to(directory)): path.read_text() for path in sorted(directory.rglob("*.yaml"))}


def test_the_committed_plans_are_current(rendering, tmp_path):
    fresh = _tree(plan.write_plan(rendering, tmp_path))
    committed = _tree(PLANS / rendering.stack)
    stale = sorted(path for path in fresh.keys() | committed.keys() if fresh.get(path) != committed.get(path))
    assert not stale, f"plans/{rendering.stack} is stale ({', '.join(stale)}): run `{plan.REFRESH_COMMAND}`"


def _secret_values(value, inside_secret=False):
    """Every string Pulumi holds as (part of) a secret."""
    if plan.is_secret(value):
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
    files = plan.render_files(rendering)
    assert files == plan.render_files(copy.deepcopy(rendering))
    assert {"resources.yaml", "outputs.yaml", "kubernetes/namespace-flux.yaml"} <= set(files)
    for name in rendering.secret_outputs:
        assert f"{name}: '{plan.REDACTED}'" in files["outputs.yaml"]
    text = "".join(files.values())
    secrets = {secret for resource in rendering.resources for secret in _secret_values(resource.inputs)}
    assert [secret for secret in secrets if secret in text] == []
    assert plan.SECRET_SIG not in text


def _added(rendering, *objects):
    """A copy of the rendering that also declares `objects`, as the program would register them."""
    changed = copy.deepcopy(rendering)
    for obj in objects:
        group_version = obj["apiVersion"] if "/" in obj["apiVersion"] else f"core/{obj['apiVersion']}"
        type_ = f"kubernetes:{group_version}:{obj['kind']}"
        name = obj["metadata"]["name"]
        changed.resources.append(Registered(
            type=type_, name=name, urn=f"urn:pulumi:{rendering.stack}::flux-neuron::{type_}::{name}", id=name,
            parent="", custom=True, inputs=copy.deepcopy(obj), outputs={}, dependencies=(), provider=""))
    return changed


def compile_job():
    """A Job wired like a compile Job: Neuron scheduler, Neuron NodePool and its taint, the graphs PVC."""
    limits = {"cpu": "4", "memory": "16Gi", "aws.amazon.com/neuron": 8}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "seeded", "namespace": WORKLOAD_NAMESPACE},
        "spec": {"template": {"metadata": {"labels": {"app": "seeded"}}, "spec": {
            "restartPolicy": "Never",
            "schedulerName": NEURON_SCHEDULER_NAME,
            "nodeSelector": {"karpenter.sh/nodepool": neuron_nodepool("trn1")},
            "tolerations": [{"key": NEURON_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
            "volumes": [{"name": "graphs", "persistentVolumeClaim": {"claimName": "flux-graphs-rw"}}],
            "containers": [{
                "name": "compile", "image": "example.com/flux@sha256:" + "0" * 64,
                "securityContext": {"allowPrivilegeEscalation": False},
                "resources": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": limits},
                "volumeMounts": [{"name": "graphs", "mountPath": "/graphs"}],
            }],
        }}},
    }


def _pod(job):
    return job["spec"]["template"]["spec"]


def _messages(changed, check, baseline):
    """What `check` reports on the changed copy beyond what it reports on the rendering it came from,
    so each test sees its own seeded defect whatever state the real program is in."""
    before = set(plan.check(baseline))
    return [problem.message for problem in plan.check(changed) if problem.check == check and problem not in before]


@DEV
def test_the_seeded_job_is_clean_so_each_defect_below_is_the_only_problem(rendering):
    assert set(plan.check(_added(rendering, compile_job()))) == set(plan.check(rendering))


def _dangling_claim(job):
    _pod(job)["volumes"][0]["persistentVolumeClaim"]["claimName"] = "flux-graphs-typo"


def _wrong_scheduler(job):
    _pod(job)["schedulerName"] = "neuron-scheduler"


def _no_toleration(job):
    _pod(job)["tolerations"] = []


def _missing_secret_key(job):
    _pod(job)["containers"][0]["env"] = [
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}]


def _literal_token(job):
    _pod(job)["containers"][0]["env"] = [{"name": "HF_TOKEN", "value": "hf_abcdefghijklmnopqrstuvwxyz"}]


def _inlined_secret(job):
    _pod(job)["containers"][0]["env"] = [{"name": "MODEL", "value": SECRET}]


def _privileged(job):
    _pod(job)["containers"][0]["securityContext"] = {"privileged": True}


def _no_limits(job):
    del _pod(job)["containers"][0]["resources"]["limits"]


@DEV
@pytest.mark.parametrize("seed, check, message", [
    (_dangling_claim, "Cross-references",
     "Job flux/seeded: PersistentVolumeClaim 'flux-graphs-typo' does not exist in namespace flux"),
    (_wrong_scheduler, "Cross-references",
     "Job flux/seeded: schedulerName 'neuron-scheduler' is neither 'default-scheduler' "
     f"nor the Neuron scheduler '{NEURON_SCHEDULER_NAME}'"),
    (_no_toleration, "Cross-references",
     f"Job flux/seeded: does not tolerate taint {NEURON_TAINT_KEY}:NoSchedule of NodePool 'neuron-trn1'"),
    (_missing_secret_key, "Cross-references", "Job flux/seeded: Secret 'hf' does not exist in namespace flux"),
    (_literal_token, "Security posture",
     "Job flux/seeded container 'compile': env HF_TOKEN is a literal; take it from a secretKeyRef"),
    (_inlined_secret, "Security posture",
     "Job flux/seeded: a secret value is written into the object (reference a Secret instead)"),
    (_privileged, "Security posture", "Job flux/seeded container 'compile': runs privileged"),
    (_no_limits, "Security posture", "Job flux/seeded container 'compile': no limits for cpu, memory"),
])
def test_a_seeded_pod_defect_fails_the_check_by_name(rendering, seed, check, message):
    job = compile_job()
    seed(job)
    assert message in _messages(_added(rendering, job), check, rendering)


@DEV
def test_the_neuron_scheduler_needs_the_release_that_installs_it(rendering):
    without_release = _added(rendering, compile_job())
    without_release.resources = [r for r in without_release.resources if r.type != plan.HELM_RELEASE
                                 or not r.inputs["chart"].endswith(plan.NEURON_CHART)]
    expected = (f"Job flux/seeded: schedulerName '{NEURON_SCHEDULER_NAME}' "
                "but no neuron-helm-chart release installs that scheduler")
    assert expected in _messages(without_release, "Cross-references", rendering)


def hf_secret(value):
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "hf", "namespace": WORKLOAD_NAMESPACE}, "stringData": {"token": value}}


@DEV
def test_secret_keys_must_exist_and_secret_values_must_be_pulumi_secrets(rendering):
    job = compile_job()
    _missing_secret_key(job)
    _pod(job)["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]["key"] = "hf-token"
    assert _messages(_added(rendering, job, hf_secret(SECRET)), "Cross-references", rendering) == [
        "Job flux/seeded: Secret 'hf' has no key 'hf-token'"]
    assert _messages(_added(rendering, hf_secret("hf_abcdefghijklmnopqrstuvwxyz")), "Security posture",
                     rendering) == [
        "Secret flux/hf: stringData.token is plaintext in the program (take it from a secret config value)"]
    rendered = plan.render_files(_added(rendering, hf_secret(SECRET)))["kubernetes/secret-flux-hf.yaml"]
    assert "token: '[secret]'" in rendered and "hf_" not in rendered


@DEV
def test_services_and_ingresses_must_reach_pods(rendering):
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "flux-512x512", "namespace": "flux"},
               "spec": {"selector": {"app": "nothing"}, "ports": [{"name": "http", "port": 80}]}}
    ingress = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"name": "flux", "namespace": "flux"},
               "spec": {"rules": [{"http": {"paths": [
                   {"path": "/flux/512x512", "pathType": "Prefix",
                    "backend": {"service": {"name": "flux-512x512", "port": {"number": 8080}}}},
                   {"path": "/flux/1024x576", "pathType": "Prefix",
                    "backend": {"service": {"name": "flux-1024x576", "port": {"number": 80}}}}]}}]}}
    assert _messages(_added(rendering, compile_job(), service, ingress), "Cross-references", rendering) == [
        "Ingress flux/flux: backend Service 'flux-1024x576' does not exist",
        "Ingress flux/flux: backend Service 'flux-512x512' has no port {'number': 8080}",
        "Service flux/flux-512x512: selector {'app': 'nothing'} matches no pod",
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
    job = compile_job()
    _dangling_claim(job)
    _privileged(job)
    monkeypatch.setattr(plan, "run_program", lambda stack: _added(rendering, job))
    assert plan.main(["--stack", "dev", "--check"]) == 1
    printed = capsys.readouterr().out
    assert printed.startswith("dev: ") and " problem(s) (" in printed.splitlines()[0]
    assert "\n  Cross-references:\n    - Job flux/seeded: PersistentVolumeClaim 'flux-graphs-typo'" in printed
    security = printed.split("\n  Security posture:\n")[1]
    assert "    - Job flux/seeded container 'compile': runs privileged\n" in security
