"""The workloads (issue 4) as the real program registers them for every real stack file: the image,
the HF token, the weights Job, per shape a graphs Job and autoscaled serving, the activator, the ALB ingress and
the endpoints.

Renderings are cached: `rendering` (conftest) per stack file, and three config variants per stack.
"""

from __future__ import annotations

import json
import re
import shlex

import pytest

from infra import catalog, versions
from infra.config import ConfigError, NeuronPool, SecretText, load_stack_config
from infra.image import CACHE_TAG, DOCKERFILE, PLATFORM, SOURCE_TAG_PREFIX, image_sources, source_tag
from infra.naming import (
    ACTIVATOR, HF_TOKEN_SECRET, LOAD_BALANCER_CONTROLLER_SERVICE_ACCOUNT, METRICS_NAMESPACE, NEURON_DEVICE_RESOURCE,
    NEURON_FAMILY_LABEL, NOT_AWAITED, SERVE, SYSTEM_NAMESPACE, SYSTEM_NODE_LABEL, WORKLOAD_NAMESPACE, endpoint_path,
    workload_labels, workload_name,
)
from infra.dashboard import AGENT_SERVICE_ACCOUNT
from infra.ingress import SSL_POLICY, ingress_annotations, url_scheme
from common.image import CONTAINER_UID
from infra.cold_start import ARTIFACT_GB, scale_up_period_seconds, startup_probe_seconds
from infra import sizing
from infra.pods import (
    AUTOSCALING_METRIC, CPU_COMPILE_SELECTOR, HF_TOKEN_PATH_ENV, PLATFORM_CPU_SELECTOR, HostShare, WorkloadSettings,
    compile_job_name, host_share, serving_deployment_spec, weights_job_name,
)
from common import activation
from common.artifacts import READERS_ENV
from common.shapes import parse_shape
from planning.checks.kubernetes import kubernetes_schema_problems
from planning.offline import REPO_ROOT, manifest, run_program, stack_file_config, with_overrides
from planning.secrets import is_secret
from common import endpoints
from serving.cli import build_parser
from tests.infra import compile_cli

JOB = "kubernetes:batch/v1:Job"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
SERVICE = "kubernetes:core/v1:Service"
PDB = "kubernetes:policy/v1:PodDisruptionBudget"
HPA = "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"
INGRESS = "kubernetes:networking.k8s.io/v1:Ingress"
SECRET = "kubernetes:core/v1:Secret"
SERVICE_ACCOUNT = "kubernetes:core/v1:ServiceAccount"
CLAIM = "kubernetes:core/v1:PersistentVolumeClaim"
NODEPOOL = "kubernetes:karpenter.sh/v1:NodePool"
RELEASE = "kubernetes:helm.sh/v3:Release"
WORKLOAD_TYPES = (JOB, DEPLOYMENT, SERVICE, PDB, HPA, INGRESS, SECRET, SERVICE_ACCOUNT)
DIGEST_REF = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")
KEY_FLAGS = ("--shape", "--model", "--revision", "--backend", "--target", "--tp-degree", "--dtype",
             "--max-text-length")
# trn2's pods pass these too (NxD Inference's degrees are fields of its keys).
TRN2_KEY_FLAGS = ("--context-parallel", "--cfg-parallel")

RECOGNISABLE_TOKEN = SecretText("hf_RecognisableTestTokenXyzzy0123456789")
EXTRA_SHAPE = "768x1344"
PREBUILT_IMAGE = "123456789012.dkr.ecr.us-west-2.amazonaws.com/flux-prebuilt@sha256:" + "ab" * 32


def certificate_arn(region):
    return f"arn:aws:acm:{region}:123456789012:certificate/0a1b2c3d-0a1b-0a1b-0a1b-0a1b2c3d4e5f"


_variants = {}


def variant(stack, kind):
    """The stack rendered with one config change set (cached: each run takes seconds)."""
    if (stack, kind) not in _variants:
        raw = stack_file_config(stack)[0]
        shapes = json.loads(raw["flux-neuron:shapes"])
        overrides = {
            # A shape more, the token set from config, and the optional ingress settings: only
            # the shape changes which resources exist.
            "added": {"flux-neuron:shapes": [*shapes, EXTRA_SHAPE], "flux-neuron:hfToken": RECOGNISABLE_TOKEN,
                      "flux-neuron:ingress": {"certificateArn": certificate_arn(raw["aws:region"]),
                                              "internal": True}},
            "removed": {"flux-neuron:shapes": shapes[1:]},
            "prebuilt": {"flux-neuron:image": {"uri": PREBUILT_IMAGE}},
            "public": {"flux-neuron:ingress": {"certificateArn": certificate_arn(raw["aws:region"])}},
        }[kind]
        _variants[(stack, kind)] = run_program(stack, overrides)
    return _variants[(stack, kind)]


def declared(rendering, type_):
    """Kubernetes objects of one type by metadata name, as they would be applied."""
    return {manifest(r)["metadata"]["name"]: manifest(r) for r in rendering.of_type(type_)}


def pod_specs(rendering):
    """(kind, name, pod spec, pod labels) of every Job and Deployment."""
    for type_ in (JOB, DEPLOYMENT):
        for name, obj in declared(rendering, type_).items():
            template = obj["spec"]["template"]
            yield obj["kind"], name, template["spec"], template["metadata"]["labels"]


def serving(rendering):
    """The serving Deployments, by name (the activator's is the other one)."""
    return {name: obj for name, obj in declared(rendering, DEPLOYMENT).items() if name != ACTIVATOR}


def neuron_pods(rendering):
    """(kind, name, pod spec) of the pods that hold Neuron devices."""
    return [(kind, name, spec) for kind, name, spec, _ in pod_specs(rendering)
            if NEURON_DEVICE_RESOURCE in spec["containers"][0]["resources"]["limits"]]


def containers(spec):
    return [*spec.get("initContainers", []), *spec["containers"]]


def key_options(command):
    return {flag: command[command.index(flag) + 1] for flag in (*KEY_FLAGS, *TRN2_KEY_FLAGS) if flag in command}


def expected_key_options(stack_config, shape):
    """The key options every command of a shape passes, as the stack file states them."""
    expected = {"--shape": shape, "--model": stack_config.model.id, "--revision": stack_config.model.revision,
                "--backend": "neuron", "--target": stack_config.serving.pool,
                "--tp-degree": str(stack_config.compile.tensor_parallel), "--dtype": stack_config.dtype,
                "--max-text-length": str(stack_config.model.max_text_length)}
    if stack_config.serving.pool == "trn2":
        expected |= {"--context-parallel": str(stack_config.compile.context_parallel),
                     "--cfg-parallel": str(stack_config.compile.cfg_parallel)}
    return expected


def release(rendering, chart_name):
    return next(r for r in rendering.of_type(RELEASE) if r.inputs["name"] == chart_name)


def tolerates(tolerations, taint):
    return any(
        toleration.get("key") in (None, taint["key"])
        and toleration.get("effect") in (None, taint["effect"])
        and (toleration.get("operator") == "Exists" or toleration.get("value") == taint.get("value"))
        for toleration in tolerations)


def minutes(duration):
    assert duration.endswith("m"), duration
    return int(duration[:-1])


# --- per shape: what exists and how it is wired ------------------------------------------------------

def test_the_stack_has_one_weights_job_and_every_shape_a_graphs_job_and_its_serving_objects(rendering, stack_config):
    shapes = [str(shape) for shape in stack_config.shapes]
    settings = WorkloadSettings.of(stack_config)
    assert set(declared(rendering, JOB)) == {compile_job_name(settings, shape) for shape in stack_config.shapes} | {
        weights_job_name(settings)}
    assert set(declared(rendering, DEPLOYMENT)) == {workload_name(SERVE, shape) for shape in shapes} | {ACTIVATOR}
    for type_ in (SERVICE, PDB, HPA):
        assert set(declared(rendering, type_)) == {workload_name(SERVE, shape) for shape in shapes}, type_
    for type_ in WORKLOAD_TYPES:
        for name, obj in declared(rendering, type_).items():
            # The dashboard's metrics agent runs beside Prometheus, with its account (infra.dashboard).
            expected = METRICS_NAMESPACE if (type_, name) == (SERVICE_ACCOUNT, AGENT_SERVICE_ACCOUNT) else (
                WORKLOAD_NAMESPACE)
            assert obj["metadata"]["namespace"] == expected


def test_workload_objects_match_the_kubernetes_schemas(rendering, stack_config):
    objects = [obj for type_ in WORKLOAD_TYPES for obj in declared(rendering, type_).values()]
    assert [p for obj in objects for p in kubernetes_schema_problems(obj, stack_config.kubernetes_version)] == []


def test_every_container_runs_the_built_image_by_digest(rendering):
    repository = rendering.one("aws:ecr/repository:Repository", "image")
    image_ref = rendering.outputs["image"]
    assert DIGEST_REF.match(image_ref) and image_ref.startswith(repository.outputs["repositoryUrl"] + "@")
    for _, name, spec, _ in pod_specs(rendering):
        for container in containers(spec):
            assert container["image"] == image_ref, name
            # The DLC's entrypoint never exits after a command and ours serves: always say what runs.
            assert container["command"][:3] in (["python", "-m", "model.compile"], ["python", "-m", "serving"],
                                                ["python", "-m", "common.activation"]), name


def test_the_image_is_built_for_neuron_hosts_and_pushed_with_a_registry_cache(rendering):
    repository = rendering.one("aws:ecr/repository:Repository", "image").inputs
    assert repository["imageScanningConfiguration"] == {"scanOnPush": True}
    assert repository["imageTagMutability"] == "IMMUTABLE_WITH_EXCLUSION"
    assert repository["imageTagMutabilityExclusionFilters"] == [{"filter": CACHE_TAG, "filterType": "WILDCARD"}]
    assert json.loads(rendering.one("aws:ecr/lifecyclePolicy:LifecyclePolicy", "image").inputs["policy"])["rules"]
    build = rendering.one("docker-build:index:Image", "image").inputs
    assert build["platforms"] == [PLATFORM] == ["linux/amd64"]
    assert build["push"] is True and build["dockerfile"] == {"location": DOCKERFILE}
    assert build["context"] == {"location": "."}
    repository_url = rendering.one("aws:ecr/repository:Repository", "image").outputs["repositoryUrl"]
    (tag,) = build["tags"]
    assert re.fullmatch(re.escape(f"{repository_url}:{SOURCE_TAG_PREFIX}") + "[0-9a-f]{20}", tag)
    cache = build["cacheTo"][0]["registry"]
    assert cache["ref"].endswith(f":{CACHE_TAG}") and cache["imageManifest"] and cache["ociMediaTypes"]
    assert build["cacheFrom"] == [{"registry": {"ref": cache["ref"]}}]
    registry = build["registries"][0]
    assert registry["username"] == "AWS" and is_secret(registry["password"])


def test_a_prebuilt_image_from_config_replaces_the_build():
    rendering = variant("dev", "prebuilt")
    assert rendering.of_type("aws:ecr/repository:Repository") == []
    assert rendering.of_type("docker-build:index:Image") == []
    assert rendering.outputs["image"] == PREBUILT_IMAGE
    for _, _, spec, _ in pod_specs(rendering):
        assert {container["image"] for container in containers(spec)} == {PREBUILT_IMAGE}


def test_the_image_tag_hashes_the_build_context(tmp_path, monkeypatch):
    copied = {path.relative_to(REPO_ROOT).parts[0] for path in image_sources()}
    assert {"model", "serving", DOCKERFILE.split("/")[0]} <= copied
    (tmp_path / "serving").mkdir()
    (tmp_path / DOCKERFILE).write_text("FROM scratch\n")
    (tmp_path / f"{DOCKERFILE}.dockerignore").write_text("*\n!serving/\n!pins.py\n**/__pycache__\n")
    (tmp_path / "pins.py").write_text("X = 1\n")
    (tmp_path / "other.py").write_text("")
    monkeypatch.setattr("infra.image.REPO_ROOT", tmp_path)
    tag = source_tag()
    (tmp_path / "other.py").write_text("outside the context")
    (tmp_path / "serving" / "__pycache__").mkdir()
    (tmp_path / "serving" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    assert source_tag() == tag
    (tmp_path / "pins.py").write_text("X = 2\n")
    assert source_tag() != tag


def test_claims_secrets_and_service_accounts_the_pods_name_exist(rendering):
    claims = declared(rendering, CLAIM)
    secrets = declared(rendering, SECRET)
    accounts = declared(rendering, SERVICE_ACCOUNT)
    for _, name, spec, _ in pod_specs(rendering):
        for volume in spec["volumes"]:
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, name
            if "secret" in volume:
                keys = secrets[volume["secret"]["secretName"]]["stringData"]
                assert {item["key"] for item in volume["secret"]["items"]} <= set(keys), name
        for container in containers(spec):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]]["stringData"], name
            mounted = {volume["name"] for volume in spec["volumes"]}
            assert {mount["name"] for mount in container.get("volumeMounts", [])} <= mounted, name
        assert spec["serviceAccountName"] in accounts, name
        assert spec["automountServiceAccountToken"] is False
        assert accounts[spec["serviceAccountName"]]["automountServiceAccountToken"] is False
    # One account per role: the publishing Jobs, the servers, the activator (the one that may call the API).
    roles = {"Job": set(), SERVE: set(), ACTIVATOR: set()}
    for kind, name, spec, _ in pod_specs(rendering):
        roles["Job" if kind == "Job" else ACTIVATOR if name == ACTIVATOR else SERVE].add(spec["serviceAccountName"])
    assert all(len(names) == 1 for names in roles.values()) and len(set().union(*roles.values())) == 3


def test_neuron_pods_use_the_neuron_scheduler_and_fit_a_tolerated_pool(rendering):
    installed = release(rendering, "neuron-helm-chart").inputs["values"]["scheduler"]["customScheduler"]
    nodepools = declared(rendering, NODEPOOL)
    assert neuron_pods(rendering)
    for _, name, spec in neuron_pods(rendering):
        assert spec["schedulerName"] == installed["fullnameOverride"], name
        family_pools = [pool["spec"]["template"]["spec"] for pool in nodepools.values()
                        if (pool["spec"]["template"].get("metadata") or {}).get("labels", {}).get(NEURON_FAMILY_LABEL)
                        == spec["nodeSelector"][NEURON_FAMILY_LABEL]]
        assert family_pools, name
        for pool in family_pools:
            for taint in pool["taints"]:
                assert tolerates(spec["tolerations"], taint), name
            requirements = {r["key"]: r["values"] for r in pool["requirements"]}
            family = requirements["karpenter.k8s.aws/instance-family"][0]
            counts = catalog.valid_device_counts(family, tuple(requirements["node.kubernetes.io/instance-type"]))
            resources = next(c for c in spec["containers"])["resources"]
            devices = int(resources["limits"][NEURON_DEVICE_RESOURCE])
            assert resources["requests"][NEURON_DEVICE_RESOURCE] == str(devices) and devices in counts, name


# Dev: a trn1.32xlarge device's share is 128/16 = 8 vCPUs and 512/16 = 32 GiB; prod: an inf2 device's
# is 16 vCPUs and 64 GiB on both types. Serving gets 70 % of its devices' share (4 x 8 x 0.7 = 22.4;
# 4 x 32 x 0.7 = 89.6) and more memory than the 89 GiB share: the verified copy in memory (40 GiB), the graphs
# loaded from it (31.4 GiB), /dev/shm (22 GiB) and the process (8 GiB).
# trn2: a device's share of trn2.3xlarge and trn2.48xlarge alike is 12 vCPUs and 128 GiB (8 and 89 at 70 %); the pod
# holds its verified copy (41 GiB: every rank's files of TP 4 over a world of 4, CLIP and the VAE decoder on each
# rank, 32.7 GiB, plus a quarter), the graphs loaded from it, /dev/shm (22 GiB) and the process: 104 GiB, which a
# trn2.3xlarge's 128 GiB less 16 for the node hold.
SERVING_SHARES = {"dev": ("22", "102Gi"), "prod": ("22", "102Gi"), "trn2": ("8", "104Gi")}
# Both stacks compile device-less on m7i.4xlarge (64 GiB, 16 vCPUs): a graphs Job holds the transformer once
# (22.2 GiB), its rank's share (22.2 x 1.25 / TP: 3.5 GiB at TP 8, 6.9 at TP 4) and 24 GiB for neuronx-cc, and the
# CPU share of that memory (16 x 50/64 = 12.5; 16 x 54/64 = 13.5); the weights Job the transformer and its rank's
# share and 8 GiB for the process.
# trn2 compiles on trn2 (its graphs Jobs: the transformer, its TP 4 rank and neuronx-cc, 54 GiB, with the CPU share
# of their one device, 8 vCPUs of a trn2.3xlarge) and shards device-less: NxD Inference's shard_weights holds the
# transformer and all 4 ranks' shares of it at once (22.2 + 4 x 6.9 + 8 GiB = 58 GiB, 15 of an m7i.4xlarge's
# 16 vCPUs).
JOB_SIZES = {"dev": {"graphs": ("13", "50Gi"), "weights": ("9", "34Gi")},
             "prod": {"graphs": ("14", "54Gi"), "weights": ("10", "38Gi")},
             "trn2": {"graphs": ("8", "54Gi"), "weights": ("15", "58Gi")}}
# schnell is prod's setup (inf2, TP 4, bfloat16) for a transformer of FLUX.1-dev's size.
SERVING_SHARES["schnell"], JOB_SIZES["schnell"] = SERVING_SHARES["prod"], JOB_SIZES["prod"]


def test_serving_pods_get_their_devices_cpu_share_and_the_memory_they_hold(rendering):
    for name, deployment in serving(rendering).items():
        limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert (limits["cpu"], limits["memory"]) == SERVING_SHARES[rendering.stack], name


def test_publishing_jobs_get_the_memory_of_one_compile_and_its_cpu_share(rendering, stack_config):
    settings = WorkloadSettings.of(stack_config)
    for name, job in declared(rendering, JOB).items():
        (container,) = job["spec"]["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        kind = "weights" if name == weights_job_name(settings) else "graphs"
        assert (limits["cpu"], limits["memory"]) == JOB_SIZES[rendering.stack][kind], name
        # The compiler and torch use as many threads as the pod has CPUs.
        assert compile_cli.parse(compile_cli.after_module(container["command"])).cpus == int(limits["cpu"]), name


def test_a_pod_shares_the_host_of_the_leanest_type_it_fits_on():
    pool = NeuronPool("inf2", ("inf2.8xlarge", "inf2.48xlarge"), ("on-demand",), 24)
    # One device fits both: inf2.48xlarge's 16 vCPUs and 64 GiB per device are the leaner share.
    assert host_share(pool, 1) == HostShare(cpu=11, memory_gib=44)
    # Two fit inf2.48xlarge only.
    assert host_share(pool, 2) == HostShare(cpu=22, memory_gib=89)


def test_more_devices_than_tensor_parallel_needs_render_only_with_a_reason():
    serving = {**json.loads(DEV_RAW["flux-neuron:serving"]), "devices": 8,
               "extraDevicesReason": "a second model copy per pod"}
    # Room for 3 shapes x (2 + 1 surge) x 8 serving devices (the compiles hold none).
    pools = json.loads(DEV_RAW["flux-neuron:neuronPools"])
    pools["trn1"]["maxDevices"] = 72
    config = load_stack_config(with_overrides(DEV_RAW, {"flux-neuron:serving": serving, "flux-neuron:neuronPools": pools}))
    spec = serving_deployment_spec(WorkloadSettings.of(config), config.shapes[0], "image", "ro", "my-scheduler")
    resources = spec["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"][NEURON_DEVICE_RESOURCE] == resources["limits"][NEURON_DEVICE_RESOURCE] == "8"
    with pytest.raises(ConfigError, match="extraDevicesReason saying why"):
        load_stack_config(with_overrides(DEV_RAW, {"flux-neuron:serving": {**serving, "extraDevicesReason": None}}))


def test_the_image_user_is_the_uid_pods_and_graph_volumes_use():
    dockerfile = (REPO_ROOT / DOCKERFILE).read_text()
    assert re.search(rf"^USER {CONTAINER_UID}:{CONTAINER_UID}$", dockerfile, re.MULTILINE)


def test_pods_run_non_root_with_guaranteed_cpu_and_memory(rendering):
    for _, name, spec, _ in pod_specs(rendering):
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == CONTAINER_UID, name
        for container in containers(spec):
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            resources = container["resources"]
            for kind in ("cpu", "memory"):
                assert resources["requests"][kind] and resources["limits"][kind], name
        # Guaranteed QoS: every container's cpu and memory requests equal its limits.
        for container in containers(spec):
            resources = container["resources"]
            assert {k: resources["requests"][k] for k in resources["limits"]} == resources["limits"], name


def test_publishing_jobs_run_once_within_their_deadline_and_are_not_awaited(rendering, stack_config):
    jobs, settings = {r.name: r for r in rendering.of_type(JOB)}, WorkloadSettings.of(stack_config)
    for name, job in declared(rendering, JOB).items():
        spec = job["spec"]
        assert spec["backoffLimit"] <= 1 and spec["ttlSecondsAfterFinished"] > 0
        assert spec["activeDeadlineSeconds"] == stack_config.compile.timeout_minutes * 60
        # pulumi up creates the Job and moves on: the compile's hours are not the update's.
        assert NOT_AWAITED.items() <= job["metadata"]["annotations"].items() and not jobs[name].custom_timeouts
        template = spec["template"]
        assert template["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
        pod = template["spec"]
        assert pod["restartPolicy"] == "Never"
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        (container,) = pod["containers"]
        if name == weights_job_name(settings) or stack_config.compile_pool is None:
            # Device-less, on the on-demand nodes of the CPU family the sizing model sized them for.
            assert pod["nodeSelector"] == CPU_COMPILE_SELECTOR and "schedulerName" not in pod
            assert NEURON_DEVICE_RESOURCE not in container["resources"]["limits"], name
        else:
            # On the serving family's on-demand nodes (trn2's graphs compile there), holding the devices of its ranks.
            assert pod["nodeSelector"] == {NEURON_FAMILY_LABEL: stack_config.compile.pool,
                                           "karpenter.sh/capacity-type": "on-demand"}, name
            assert container["resources"]["limits"][NEURON_DEVICE_RESOURCE] == str(stack_config.compile.devices)
        mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in container["volumeMounts"]}
        assert mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory"
        graphs = mounts[container["command"][container["command"].index("--out") + 1]]
        assert graphs["persistentVolumeClaim"] == {"claimName": "flux-graphs-rw", "readOnly": False}
        assert all("valueFrom" not in env for env in container["env"])
        reads_gated = stack_config.model.needs_hf_token if name == weights_job_name(
            WorkloadSettings.of(stack_config)) else stack_config.model.gated
        if not reads_gated:  # schnell: no token anywhere near the Job
            assert HF_TOKEN_PATH_ENV not in json.dumps(container) and HF_TOKEN_SECRET not in json.dumps(pod), name
            continue
        # The token is a file of the Secret, where huggingface_hub looks for it.
        token_path = next(env["value"] for env in container["env"] if env["name"] == HF_TOKEN_PATH_ENV)
        token_mount = next(m for m in container["volumeMounts"] if token_path.startswith(m["mountPath"] + "/"))
        assert token_mount["readOnly"] is True
        token_volume = volumes[token_mount["name"]]["secret"]
        assert token_volume["secretName"] == HF_TOKEN_SECRET
        assert [item["path"] for item in token_volume["items"]] == [token_path.rsplit("/", 1)[1]]
        assert token_volume["defaultMode"] == 0o400 and pod["securityContext"]["fsGroup"] == CONTAINER_UID


def test_the_weights_job_shards_once_and_each_graphs_job_compiles_its_shape_only(rendering, stack_config):
    settings = WorkloadSettings.of(stack_config)
    common = {"model": stack_config.model.id, "revision": stack_config.model.revision, "dtype": stack_config.dtype,
              "backend": "neuron", "target": stack_config.serving.pool,
              "tp_degree": stack_config.compile.tensor_parallel, "max_text_length": stack_config.model.max_text_length,
              "out": "/graphs",
              # trn2's degrees, both passed there (NxD Inference's keys hold both), neither elsewhere.
              **{field: getattr(stack_config.compile, field) if stack_config.serving.pool == "trn2" else None
                 for field in ("context_parallel", "cfg_parallel")}}
    shapes = []
    for name, job in declared(rendering, JOB).items():
        options = compile_cli.parse(compile_cli.after_module(job["spec"]["template"]["spec"]["containers"][0]["command"]))
        assert {key: getattr(options, key) for key in common} == common, name
        assert not options.resolve
        if name == weights_job_name(settings):
            assert options.weights and options.shape is None
        else:
            assert options.graphs_only and name == compile_job_name(settings, options.shape)
            shapes.append(options.shape)
    assert sorted(shapes) == sorted(stack_config.shapes)


def _gib(quantity: str) -> int:
    assert quantity.endswith("Gi"), quantity
    return int(quantity.removesuffix("Gi"))


def _local_volume(spec, container, local_dir):
    mount = next(m for m in container["volumeMounts"] if local_dir.startswith(m["mountPath"]))
    return next(v for v in spec["volumes"] if v["name"] == mount["name"])


def test_compile_scratch_lives_on_a_gp3_volume_of_its_own_sized_for_what_the_job_writes(rendering, stack_config):
    """Not the node's disk: inf2 has no instance store, and its root volume also holds the image."""
    settings = WorkloadSettings.of(stack_config)
    sizes = {weights_job_name(settings): sizing.weights_scratch_gib(stack_config.dtype,
                                                                    stack_config.compile.tensor_parallel,
                                                                    settings.ranks.world)}
    for name, job in declared(rendering, JOB).items():
        spec = job["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        volume = _local_volume(spec, container, container["command"][container["command"].index("--scratch") + 1])
        claim = volume["ephemeral"]["volumeClaimTemplate"]["spec"]
        assert claim["storageClassName"] == "gp3-encrypted" and claim["accessModes"] == ["ReadWriteOnce"], name
        assert _gib(claim["resources"]["requests"]["storage"]) == sizes.get(name, sizing.graphs_scratch_gib()), name
        # The download and the compiler's files go there, not to the small /tmp.
        env = {item["name"]: item["value"] for item in container["env"]}
        assert all(env[variable].startswith(volume_mount(container, volume["name"])) for variable in ("HF_HOME",
                                                                                                 "TMPDIR")), name
        assert _gib(container["resources"]["requests"]["ephemeral-storage"]) <= 2, name
    # The weights Job holds the bfloat16 download and the shards: more than any graphs Job.
    assert sizing.weights_scratch_gib(stack_config.dtype, stack_config.compile.tensor_parallel) > \
        sizing.download_bytes() / 2**30


def volume_mount(container, volume_name):
    return next(mount["mountPath"] for mount in container["volumeMounts"] if mount["name"] == volume_name)


def test_the_graphs_are_cached_once_on_the_node_in_the_pods_memory(rendering):
    """No Mountpoint data cache on the serving volume; the verified copy (TMPDIR) is the one cache."""
    volumes = {manifest(v)["metadata"]["name"]: manifest(v)["spec"]
               for v in rendering.of_type("kubernetes:core/v1:PersistentVolume")}
    for spec in volumes.values():
        assert set(spec["csi"]["volumeAttributes"]) == {"bucketName"}
    artifact_gib = ARTIFACT_GB * 1e9 / 2**30
    for name, deployment in serving(rendering).items():
        spec = deployment["spec"]["template"]["spec"]
        (server,) = spec["containers"]
        env = {item["name"]: item.get("value") for item in server["env"]}
        local = _local_volume(spec, server, env["TMPDIR"])["emptyDir"]
        assert local["medium"] == "Memory", name
        assert artifact_gib < _gib(local["sizeLimit"]) < 2 * artifact_gib, name
        # The copy counts against the memory limit, beside /dev/shm and the graphs the process loads.
        shm = next(v for v in spec["volumes"] if v["name"] == "shm")["emptyDir"]
        assert _gib(server["resources"]["limits"]["memory"]) > (
            _gib(local["sizeLimit"]) + _gib(shm["sizeLimit"]) + artifact_gib), name
        # Nothing graph-sized is written to node disk.
        assert _gib(server["resources"]["requests"]["ephemeral-storage"]) < artifact_gib, name
        assert int(env[READERS_ENV]) >= 1


def test_startup_probe_rollout_and_scale_up_come_from_the_cold_start_budget(rendering, stack_config):
    pool = stack_config.serving_pool.instance_types
    autoscalers = declared(rendering, HPA)
    for name, deployment in serving(rendering).items():
        shape = parse_shape(name.removeprefix(workload_name(SERVE, "")))
        (server,) = deployment["spec"]["template"]["spec"]["containers"]
        startup = server["startupProbe"]
        window = startup["periodSeconds"] * startup["failureThreshold"]
        assert startup_probe_seconds(pool, shape) <= window < startup_probe_seconds(pool, shape) + startup[
            "periodSeconds"], name
        assert deployment["spec"]["progressDeadlineSeconds"] > window
        scale_up = autoscalers[name]["spec"]["behavior"]["scaleUp"]
        assert {policy["periodSeconds"] for policy in scale_up["policies"]} == {
            scale_up_period_seconds(pool, shape, stack_config.cold_start.fast_snapshot_restore)}
        assert {(p["type"], p["value"]) for p in scale_up["policies"]} == {("Pods", 1), ("Percent", 100)}
        assert scale_up["selectPolicy"] == "Max"


def test_serving_pods_start_gated_until_their_key_is_published_and_serve_that_key(rendering, stack_config):
    """No init container waiting on a device: every pod is created with the activation gate (Kubernetes never
    schedules it, Karpenter starts no node for it) and carries the resolve the activator runs for its key."""
    jobs = declared(rendering, JOB)
    for name, deployment in serving(rendering).items():
        shape = name.removeprefix(workload_name(SERVE, ""))
        template = deployment["spec"]["template"]
        pod = template["spec"]
        assert pod["schedulingGates"] == [{"name": activation.GATE}] and "initContainers" not in pod, name
        (server,) = pod["containers"]
        job = jobs[compile_job_name(WorkloadSettings.of(stack_config), parse_shape(shape))]
        compile_command = job["spec"]["template"]["spec"]["containers"][0]["command"]
        resolve = json.loads(template["metadata"]["annotations"][activation.RESOLVE_ARGS_ANNOTATION])
        expected = expected_key_options(stack_config, shape)
        for command in (compile_command, resolve, server["command"]):
            assert key_options(command) == expected, name
        assert compile_cli.parse(resolve).resolve and activation.resolve_args(
            {"metadata": template["metadata"]}) == tuple(resolve)
        graphs = next(m for m in server["volumeMounts"] if m["mountPath"] == "/graphs")
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        assert graphs["readOnly"] and volumes[graphs["name"]]["persistentVolumeClaim"] == {
            "claimName": "flux-graphs-ro", "readOnly": True}
        assert "env" not in server or all("valueFrom" not in env for env in server["env"])
        assert server["command"][server["command"].index("--queue-size") + 1] == str(stack_config.serving.queue_size)


def test_the_serving_command_is_accepted_by_the_servers_command_line(rendering):
    from serving.cli import _compile_options

    deployment = next(iter(serving(rendering).values()))
    parser = build_parser()
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    options = _compile_options(parser.parse_args(command[3:]), parser)
    stated = key_options(command)
    assert (str(options.shape), options.model, options.revision, options.backend, options.target,
            options.tp_degree, options.dtype, options.max_text_length) == (
        stated["--shape"], stated["--model"], stated["--revision"], stated["--backend"], stated["--target"],
        int(stated["--tp-degree"]), stated["--dtype"], int(stated["--max-text-length"]))
    assert (options.context_parallel, options.cfg_parallel) == (
        int(stated.get("--context-parallel", 1)), int(stated.get("--cfg-parallel", 1)))


def test_the_activator_resolves_through_the_publishing_volume_with_its_own_short_lived_token(rendering):
    deployment = declared(rendering, DEPLOYMENT)[ACTIVATOR]
    assert NOT_AWAITED.items() <= deployment["metadata"]["annotations"].items()
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["nodeSelector"] == PLATFORM_CPU_SELECTOR and NEURON_DEVICE_RESOURCE not in container["resources"][
        "limits"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    graphs = mounts["/graphs"]
    assert graphs["readOnly"] and volumes[graphs["name"]]["persistentVolumeClaim"]["claimName"] == "flux-graphs-rw"
    token = mounts[str(activation.SERVICE_ACCOUNT_DIR)]
    sources = volumes[token["name"]]["projected"]["sources"]
    assert token["readOnly"] and sources[0]["serviceAccountToken"]["expirationSeconds"] <= 3600
    command = container["command"]
    selector = dict(pair.split("=") for pair in command[command.index("--selector") + 1].split(","))
    for deployment in serving(rendering).values():
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    role = manifest(rendering.one("kubernetes:rbac.authorization.k8s.io/v1:Role", ACTIVATOR))
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "patch"]}]


def test_probes_target_the_server_routes_on_its_port(rendering):
    for name, deployment in serving(rendering).items():
        (server,) = deployment["spec"]["template"]["spec"]["containers"]
        ports = {port["name"]: port["containerPort"] for port in server["ports"]}
        command = server["command"]
        assert ports["http"] == int(command[command.index("--port") + 1]) == endpoints.DEFAULT_PORT
        assert server["readinessProbe"]["httpGet"] == {"port": "http", "path": endpoints.READYZ}
        assert server["livenessProbe"]["httpGet"] == {"port": "http", "path": endpoints.HEALTHZ}
        # The server's own parser reads the threshold after which failing generations un-ready it.
        assert build_parser().parse_args(command[3:]).unready_after_errors == endpoints.UNREADY_AFTER_RUNTIME_ERRORS
        startup = server["startupProbe"]
        assert startup["httpGet"]["path"] == endpoints.READYZ
        # Loading the graphs and warming up takes minutes, not the probe's default 30 seconds.
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 3 * 60
        assert deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]


def test_services_pdbs_and_autoscalers_select_their_shape_pods(rendering, stack_config):
    deployments = serving(rendering)
    services, budgets, autoscalers = declared(rendering, SERVICE), declared(rendering, PDB), declared(rendering, HPA)
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = services[name]["spec"]["selector"]
        selected = [other for other, d in deployments.items()
                    if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert selected == [name]
        assert labels == workload_labels(SERVE, name.removeprefix(workload_name(SERVE, "")))
        port_names = {port["name"] for port in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
        assert {port["targetPort"] for port in services[name]["spec"]["ports"]} <= port_names
        assert budgets[name]["spec"]["selector"] == deployment["spec"]["selector"]
        assert budgets[name]["spec"]["maxUnavailable"] == 1
        scaler = autoscalers[name]["spec"]
        assert scaler["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert (scaler["minReplicas"], scaler["maxReplicas"]) == (stack_config.serving.replicas,
                                                                  stack_config.serving.max_replicas)
        assert scaler["metrics"][0]["pods"]["metric"]["name"] == AUTOSCALING_METRIC
        # The HPA owns the replica count.
        assert "replicas" not in deployment["spec"]


def test_the_autoscaling_metric_is_served_from_what_the_servers_export(rendering):
    from serving.metrics import Metrics

    exported = {metric.name for metric in Metrics().registry.collect()}
    assert {endpoints.QUEUE_DEPTH_METRIC, endpoints.IN_FLIGHT_METRIC} <= exported
    adapter = release(rendering, "prometheus-adapter").inputs
    assert adapter["version"] == versions.PROMETHEUS_ADAPTER_CHART_VERSION
    (rule,) = adapter["values"]["rules"]["custom"]
    assert rule["name"]["as"] == AUTOSCALING_METRIC
    assert endpoints.QUEUE_DEPTH_METRIC in rule["metricsQuery"] and endpoints.IN_FLIGHT_METRIC in rule["metricsQuery"]
    prometheus = release(rendering, "prometheus").inputs
    assert prometheus["version"] == versions.PROMETHEUS_CHART_VERSION
    assert adapter["values"]["prometheus"]["url"] == \
        f"http://{prometheus['name']}-server.{prometheus['namespace']}.svc"
    job = next(config for config in prometheus["values"]["serverFiles"]["prometheus.yml"]["scrape_configs"]
               if config["job_name"] == "flux-serving")
    assert job["metrics_path"] == endpoints.METRICS
    assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == [WORKLOAD_NAMESPACE]
    keep = {rule["source_labels"][0]: rule["regex"] for rule in job["relabel_configs"] if rule.get("action") == "keep"}
    label = "__meta_kubernetes_pod_label_" + re.sub(r"[./-]", "_", "app.kubernetes.io/component")
    assert keep[label] == workload_labels(SERVE, "x")["app.kubernetes.io/component"]
    assert adapter["values"]["nodeSelector"] == SYSTEM_NODE_LABEL
    # Prometheus on a node Karpenter starts in its volume's zone, never stranded without a system node there.
    assert prometheus["values"]["server"]["nodeSelector"] == PLATFORM_CPU_SELECTOR


# --- ingress and outputs ---------------------------------------------------------------------------

def test_one_alb_ingress_routes_each_shape_to_its_service(rendering, stack_config):
    (ingress,) = declared(rendering, INGRESS).values()
    services = declared(rendering, SERVICE)
    assert ingress["spec"]["ingressClassName"] == "alb"
    annotations = ingress["metadata"]["annotations"]
    paths = ingress["spec"]["rules"][0]["http"]["paths"]
    assert {path["path"] for path in paths} == {endpoint_path(shape) for shape in stack_config.shapes}
    for path in paths:
        backend = path["backend"]["service"]
        assert path["pathType"] == "Prefix"
        assert backend["port"]["name"] in {port["name"] for port in services[backend["name"]]["spec"]["ports"]}
        (rewrite,) = json.loads(annotations[f"alb.ingress.kubernetes.io/transforms.{backend['name']}"])
        (rule,) = rewrite["urlRewriteConfig"]["rewrites"]

        def rewritten(url_path):
            return re.sub(rule["regex"], rule["replace"].replace("$1", r"\1"), url_path)

        assert rewritten(path["path"] + endpoints.GENERATE) == endpoints.GENERATE
        assert rewritten(path["path"]) == rewritten(path["path"] + "/") == "/"
    # No certificate in the stack files: the load balancer is internal, plain HTTP inside the VPC only.
    assert stack_config.ingress.certificate_arn is None
    assert annotations["alb.ingress.kubernetes.io/scheme"] == "internal"
    public_subnets = sorted(s.id for s in rendering.of_type("aws:ec2/subnet:Subnet")
                            if s.inputs["tags"].get("kubernetes.io/role/elb") == "1")
    assert sorted(annotations["alb.ingress.kubernetes.io/subnets"].split(",")) == public_subnets
    assert annotations["alb.ingress.kubernetes.io/target-type"] == "ip"
    # The ALB checks readiness, and gives up on a failing pod before the kubelet does.
    assert annotations["alb.ingress.kubernetes.io/healthcheck-path"] == endpoints.READYZ
    assert annotations["alb.ingress.kubernetes.io/success-codes"] == "200"
    (deployment, *_) = serving(rendering).values()
    readiness = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    alb_gives_up = (int(annotations["alb.ingress.kubernetes.io/healthcheck-interval-seconds"])
                    * int(annotations["alb.ingress.kubernetes.io/unhealthy-threshold-count"]))
    assert alb_gives_up < readiness["periodSeconds"] * readiness["failureThreshold"]
    assert (int(annotations["alb.ingress.kubernetes.io/healthcheck-timeout-seconds"])
            < int(annotations["alb.ingress.kubernetes.io/healthcheck-interval-seconds"]))
    assert json.loads(annotations["alb.ingress.kubernetes.io/listen-ports"]) == [{"HTTP": 80}]
    idle = annotations["alb.ingress.kubernetes.io/load-balancer-attributes"]
    assert int(idle.removeprefix("idle_timeout.timeout_seconds=")) > stack_config.serving.request_timeout_seconds


def test_tls_and_an_internal_load_balancer_come_from_config(stack):
    rendering = variant(stack, "added")
    (ingress,) = declared(rendering, INGRESS).values()
    annotations = ingress["metadata"]["annotations"]
    region = stack_file_config(stack)[0]["aws:region"]
    assert annotations["alb.ingress.kubernetes.io/certificate-arn"] == certificate_arn(region)
    assert {"HTTPS": 443} in json.loads(annotations["alb.ingress.kubernetes.io/listen-ports"])
    assert annotations["alb.ingress.kubernetes.io/ssl-redirect"] == "443"
    assert annotations["alb.ingress.kubernetes.io/scheme"] == "internal"
    assert all(url.startswith("https://") for url in rendering.outputs["endpoints"].values())


def test_a_certificate_makes_the_load_balancer_internet_facing_over_https_only(stack):
    rendering = variant(stack, "public")
    (ingress,) = declared(rendering, INGRESS).values()
    annotations = ingress["metadata"]["annotations"]
    assert annotations["alb.ingress.kubernetes.io/scheme"] == "internet-facing"
    # Port 80 stays open only to redirect: every rule of the HTTP listener becomes the redirect.
    assert json.loads(annotations["alb.ingress.kubernetes.io/listen-ports"]) == [{"HTTP": 80}, {"HTTPS": 443}]
    assert annotations["alb.ingress.kubernetes.io/ssl-redirect"] == "443"
    assert annotations["alb.ingress.kubernetes.io/ssl-policy"] == SSL_POLICY
    urls = rendering.outputs["endpoints"].values()
    assert all(url.startswith("https://k8s-") for url in urls)
    assert rendering.outputs["exampleRequest"].startswith("curl -sS -X POST https://")


@pytest.mark.parametrize("ingress", [{}, {"internal": True}, {"certificateArn": certificate_arn("us-west-2")},
                                     {"certificateArn": certificate_arn("us-west-2"), "internal": True},
                                     {"certificateArn": certificate_arn("us-west-2"), "internal": False}])
def test_no_accepted_setting_publishes_plain_http(ingress):
    settings = load_stack_config(with_overrides(DEV_RAW, {"flux-neuron:ingress": ingress})).ingress
    annotations = ingress_annotations({"512x512": "flux-serve-512x512"}, settings, 120, ["subnet-a", "subnet-b"])
    listeners = json.loads(annotations["alb.ingress.kubernetes.io/listen-ports"])
    if annotations["alb.ingress.kubernetes.io/scheme"] == "internet-facing":
        assert {"HTTPS": 443} in listeners and annotations["alb.ingress.kubernetes.io/ssl-redirect"] == "443"
    else:
        assert "certificateArn" not in ingress or ingress.get("internal") is True
    assert url_scheme(settings) == ("https" if "certificateArn" in ingress else "http")


def test_the_load_balancer_controller_runs_on_system_nodes_with_its_own_role(rendering):
    controller = release(rendering, "aws-load-balancer-controller")
    assert controller.inputs["version"] == versions.AWS_LOAD_BALANCER_CONTROLLER_VERSION
    assert controller.inputs["repositoryOpts"]["repo"] == versions.AWS_LOAD_BALANCER_CONTROLLER_CHART_REPO
    values = controller.inputs["values"]
    assert values["clusterName"] == rendering.outputs["clusterName"]
    assert values["region"] == rendering.outputs["region"]
    vpc_id = rendering.one("eks:index:Cluster", "cluster").inputs["vpcId"]
    assert values["vpcId"] == vpc_id
    assert values["nodeSelector"] == SYSTEM_NODE_LABEL
    association = next(r for r in rendering.of_type("aws:eks/podIdentityAssociation:PodIdentityAssociation")
                       if r.inputs["serviceAccount"] == LOAD_BALANCER_CONTROLLER_SERVICE_ACCOUNT)
    assert association.inputs["namespace"] == controller.inputs["namespace"] == SYSTEM_NAMESPACE
    assert values["serviceAccount"]["name"] == LOAD_BALANCER_CONTROLLER_SERVICE_ACCOUNT
    assert association.urn in controller.dependencies
    role = next(r for r in rendering.of_type("aws:iam/role:Role") if r.outputs["arn"] == association.inputs["roleArn"])
    policy = next(r for r in rendering.of_type("aws:iam/rolePolicy:RolePolicy") if r.inputs["role"] == role.id)
    assert vpc_id in policy.inputs["policy"] and rendering.outputs["clusterName"] in policy.inputs["policy"]
    ingress = rendering.one(INGRESS, "ingress")
    assert controller.urn in ingress.dependencies


def test_endpoints_and_the_example_request_point_at_the_load_balancer(rendering, stack_config):
    from model.families import FAMILIES
    from serving.schemas import generate_request_model

    hostname = rendering.one(INGRESS, "ingress").outputs["status"]["loadBalancer"]["ingress"][0]["hostname"]
    urls = rendering.outputs["endpoints"]
    assert hostname.startswith("internal-")
    assert urls == {str(shape): f"http://{hostname}{endpoint_path(shape)}" for shape in stack_config.shapes}
    words = shlex.split(rendering.outputs["exampleRequest"].split("|")[0])
    assert words[:2] == ["curl", "-sS"]
    assert urls[str(stack_config.shapes[0])] + endpoints.GENERATE in words
    # The model's family is read from its configs at the Job, not here: the example must suit every family's server
    # (FLUX.1-schnell's takes at most 4 steps and no guidance).
    body = json.loads(words[words.index("-d") + 1])
    for family in FAMILIES.values():
        generate_request_model(stack_config.model.id, family)(**body)


# --- config changes -------------------------------------------------------------------------------

def resource_keys(rendering):
    return {(r.type, r.name) for r in rendering.resources}


def shape_resources(stack_config, shape):
    return {(JOB, compile_job_name(WorkloadSettings.of(stack_config), parse_shape(shape)))} | {
        (type_, workload_name(SERVE, shape)) for type_ in (DEPLOYMENT, SERVICE, PDB, HPA)}


def test_adding_a_shape_adds_exactly_its_resources(rendering, stack, stack_config):
    added = variant(stack, "added")
    assert resource_keys(added) - resource_keys(rendering) == shape_resources(stack_config, EXTRA_SHAPE)
    assert resource_keys(rendering) - resource_keys(added) == set()
    assert EXTRA_SHAPE in added.outputs["endpoints"]


def test_removing_a_shape_removes_exactly_its_resources(rendering, stack, stack_config):
    removed = variant(stack, "removed")
    assert resource_keys(rendering) - resource_keys(removed) == shape_resources(stack_config, str(stack_config.shapes[0]))
    assert resource_keys(removed) - resource_keys(rendering) == set()


def plaintext_paths(value, secret, path="$"):
    """Where `secret` appears in `value` outside Pulumi's secret wrappers."""
    if isinstance(value, dict):
        if is_secret(value):
            return []
        return [p for key, item in value.items() for p in plaintext_paths(item, secret, f"{path}.{key}")]
    if isinstance(value, list):
        return [p for index, item in enumerate(value) for p in plaintext_paths(item, secret, f"{path}[{index}]")]
    return [path] if secret in str(value) else []


def test_the_hf_token_stays_a_secret_everywhere(stack, stack_config):
    rendering = variant(stack, "added")
    # Resource inputs are what goes to the engine and into state; the mocks' outputs only echo them.
    leaks = [f"{r.type} {r.name} {p}" for r in rendering.resources for p in plaintext_paths(r.inputs, RECOGNISABLE_TOKEN)]
    leaks += [name for name, value in rendering.outputs.items()
              if name not in rendering.secret_outputs and RECOGNISABLE_TOKEN in json.dumps(value)]
    assert leaks == []
    secrets = [r for r in rendering.of_type(SECRET) if r.name == HF_TOKEN_SECRET]
    if not stack_config.model.needs_hf_token:  # schnell: a token given anyway reaches no object at all
        assert secrets == [] and not [name for _, name, spec, _ in pod_specs(rendering)
                                      if HF_TOKEN_SECRET in json.dumps(spec)]
        return
    (secret,) = secrets
    assert is_secret(secret.inputs["stringData"])
    assert manifest(secret)["stringData"] == {"token": RECOGNISABLE_TOKEN}
    # Only the compile pods get it.
    for kind, name, spec, _ in pod_specs(rendering):
        refers = HF_TOKEN_SECRET in json.dumps(spec)
        assert refers == (kind == "Job"), name


GATED_LORA = {"id": "someone/gated-style", "revision": "c" * 40, "scale": 0.5, "gated": True}


@pytest.mark.parametrize("model, weights_job, graphs_jobs", [
    ({}, True, True),  # FLUX.1-dev is gated: every Job reads it
    ({"gated": False}, False, False),
    # An ungated model with a gated adapter: only the weights Job downloads the adapter.
    ({"gated": False, "loras": [GATED_LORA]}, True, False),
], ids=["gated-model", "nothing-gated", "gated-adapter-only"])
def test_the_token_is_mounted_only_by_the_jobs_that_read_a_gated_repository(model, weights_job, graphs_jobs, caplog):
    raw_model = json.loads(DEV_RAW["flux-neuron:model"])
    rendering = run_program("dev", {"flux-neuron:model": {**raw_model, **model}})
    settings = WorkloadSettings.of(load_stack_config(with_overrides(DEV_RAW, {"flux-neuron:model": {**raw_model, **model}})))
    mounted = {name: HF_TOKEN_SECRET in json.dumps(spec) and HF_TOKEN_PATH_ENV in json.dumps(spec)
               for kind, name, spec, _ in pod_specs(rendering) if kind == "Job"}
    assert mounted.pop(weights_job_name(settings)) is weights_job
    assert set(mounted.values()) == {graphs_jobs}
    assert bool([r for r in rendering.of_type(SECRET) if r.name == HF_TOKEN_SECRET]) == (weights_job or graphs_jobs)
    # The offline runs give dev a token: unused, it is said so.
    assert ("config hfToken is set, but" in caplog.text) == (not (weights_job or graphs_jobs))


DEV_RAW = stack_file_config("dev")[0]


@pytest.mark.parametrize("changes, key, allowed", [
    ({"flux-neuron:image": {"uri": "123456789012.dkr.ecr.us-west-2.amazonaws.com/flux:latest"}},
     "flux-neuron:image.uri", "pinned by digest"),
    ({"flux-neuron:image": {"url": PREBUILT_IMAGE}}, "flux-neuron:image.url", "unknown field"),
    ({"flux-neuron:hfToken": str(RECOGNISABLE_TOKEN)}, "flux-neuron:hfToken", "a secret"),
    ({"flux-neuron:hfToken": SecretText("hf_short")}, "flux-neuron:hfToken", "'hf_' then letters and digits"),
    ({"flux-neuron:hfToken": None}, "flux-neuron:hfToken", "pulumi config set --secret hfToken"),
    ({"flux-neuron:ingress": {"certificateArn": certificate_arn("eu-west-1")}}, "flux-neuron:ingress.certificateArn",
     "an ACM certificate ARN in us-west-2"),
    ({"flux-neuron:ingress": {"internal": "yes"}}, "flux-neuron:ingress.internal", "true or false"),
    ({"flux-neuron:ingress": {"internal": False}}, "flux-neuron:ingress.internal",
     "true without flux-neuron:ingress.certificateArn: an internet-facing load balancer serves HTTPS only"),
])
def test_bad_workload_settings_are_named_without_echoing_the_token(changes, key, allowed):
    with pytest.raises(ConfigError) as raised:
        load_stack_config(with_overrides(DEV_RAW, changes))
    assert raised.value.key == key and allowed in str(raised.value)
    assert "hf_R" not in str(raised.value) and "hf_short" not in str(raised.value)


def test_a_secret_under_a_misspelt_key_is_not_echoed():
    with pytest.raises(ConfigError) as raised:
        load_stack_config({**DEV_RAW, "flux-neuron:hftoken": RECOGNISABLE_TOKEN})
    assert raised.value.key == "flux-neuron:hftoken" and RECOGNISABLE_TOKEN not in str(raised.value)


def test_a_token_in_plain_text_config_is_refused_before_any_resource():
    with pytest.raises(ConfigError, match="config flux-neuron:hfToken: .* a secret"):
        run_program("dev", {"flux-neuron:hfToken": str(RECOGNISABLE_TOKEN)})


def test_every_trn2_process_runs_at_the_logical_core_config_its_graphs_are_compiled_for(rendering, stack_config):
    """On trn2 the weights and graphs Jobs and the servers all set NEURON_LOGICAL_NC_CONFIG=2 (compiler and runtime
    must agree; the trn2 backend refuses another value); elsewhere none sets it, and the activator never does."""
    from common.neuron import LOGICAL_CORE_SIZE_ENV

    expected = {LOGICAL_CORE_SIZE_ENV: "2"} if stack_config.serving.pool == "trn2" else {}
    for kind, name, spec, _ in pod_specs(rendering):
        (container,) = spec["containers"]
        env = {item["name"]: item.get("value") for item in container.get("env", [])
               if item["name"].startswith("NEURON")}
        assert env == ({} if name == ACTIVATOR else expected), name
