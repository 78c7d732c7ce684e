"""The one image compile Jobs and serving pods run: built from serving/Dockerfile and pushed to
the stack's ECR repository, or a prebuilt one from config. Either way, pinned by digest.

The repository outlives the stack by default, as the graph cache does (docs/upgrades.md, "The graph
cache"): `pulumi destroy` leaves it, its lifecycle policy and its images (with `image.retainOnDestroy`
false it deletes them all). A kept repository is no longer in the stack's state, and ECR names are unique
per region, so the next `up` must push to it rather than create it again: `image.repository` names it
(scripts/destroy sets it), and the stack then only reads it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pulumi_docker_build as docker_build

from infra.config import ImageSettings
from infra.naming import stack_resource_name

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = "serving/Dockerfile"
# Lists, after "*", what enters the build context ("!path").
DOCKERIGNORE = f"{DOCKERFILE}.dockerignore"
# Tags are immutable except this one, which BuildKit's registry cache rewrites on every build.
CACHE_TAG = "buildcache"
SOURCE_TAG_PREFIX = "src-"
KEEP_IMAGES = 10
PLATFORM = "linux/amd64"  # trn1, trn2 and inf2 are all x86_64


def image_sources() -> list[Path]:
    """The files the build context holds: those under the dockerignore's "!" entries, bytecode aside."""
    entries = [line[1:] for line in (REPO_ROOT / DOCKERIGNORE).read_text().split() if line.startswith("!")]
    files = set()
    for entry in entries:
        root = REPO_ROOT / entry
        for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.add(path)
    return sorted(files)


def source_tag() -> str:
    """A tag that changes whenever the build context does, so an immutable tag never names other content."""
    digest = hashlib.sha256()
    for path in image_sources():
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return SOURCE_TAG_PREFIX + digest.hexdigest()[:20]


def lifecycle_policy() -> str:
    return json.dumps({"rules": [{
        "rulePriority": 1,
        "description": f"keep the newest {KEEP_IMAGES} source builds",
        "selection": {"tagStatus": "tagged", "tagPrefixList": [SOURCE_TAG_PREFIX],
                      "countType": "imageCountMoreThan", "countNumber": KEEP_IMAGES},
        "action": {"type": "expire"},
    }]})


@dataclass
class ImageArgs:
    settings: ImageSettings  # config `image`: a prebuilt uri, or where to build to


class Image(pulumi.ComponentResource):
    image_ref: pulumi.Output[str]
    # The ECR repository built images go to; None with a prebuilt image.
    repository_name: pulumi.Output[str] | None

    def __init__(self, name: str, args: ImageArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("flux-neuron:infra:Image", name, None, opts)
        settings = args.settings
        if settings.uri is not None:
            self.image_ref = pulumi.Output.from_input(settings.uri)
            self.repository_name = None
        else:
            if settings.repository is None:
                repository_url, self.repository_name = self._repository(name, settings.retain_on_destroy)
            else:
                # Kept by an earlier destroy, or another stack's: read, never changed or deleted here.
                existing = aws.ecr.get_repository_output(name=settings.repository)
                repository_url, self.repository_name = existing.repository_url, existing.name
            self.image_ref = self._build(name, repository_url)
        self.register_outputs({"image_ref": self.image_ref, "repository_name": self.repository_name})

    def _repository(self, name: str, retain: bool) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
        """The stack's own repository and its lifecycle policy, both kept by destroy unless `retain` is false."""
        child = pulumi.ResourceOptions(parent=self, retain_on_delete=retain)
        repository = aws.ecr.Repository(
            name, name=stack_resource_name(pulumi.get_stack()),
            image_scanning_configuration={"scan_on_push": True},
            image_tag_mutability="IMMUTABLE_WITH_EXCLUSION",
            image_tag_mutability_exclusion_filters=[{"filter": CACHE_TAG, "filter_type": "WILDCARD"}],
            # Not kept: every image here is rebuilt from the repository's sources, so destroy may drop them.
            force_delete=not retain,
            opts=child)
        aws.ecr.LifecyclePolicy(name, repository=repository.name, policy=lifecycle_policy(), opts=child)
        return repository.repository_url, repository.name

    def _build(self, name: str, repository_url: pulumi.Output[str]) -> pulumi.Output[str]:
        child = pulumi.ResourceOptions(parent=self)
        credentials = aws.ecr.get_authorization_token_output()
        cache = pulumi.Output.concat(repository_url, f":{CACHE_TAG}")
        image = docker_build.Image(
            name,
            context={"location": "."},  # the repository root: Pulumi runs the program from there
            dockerfile={"location": DOCKERFILE},
            platforms=[PLATFORM],
            tags=[pulumi.Output.concat(repository_url, ":", source_tag())],
            push=True,
            registries=[{"address": repository_url, "username": credentials.user_name,
                         "password": pulumi.Output.secret(credentials.password)}],
            cache_from=[{"registry": {"ref": cache}}],
            # ECR stores BuildKit caches only as OCI image manifests.
            cache_to=[{"registry": {"ref": cache, "mode": "max", "image_manifest": True, "oci_media_types": True}}],
            # Previews stay fast and need no Docker daemon; `pulumi up` builds.
            build_on_preview=False,
            opts=child)
        return pulumi.Output.concat(repository_url, "@", image.digest)
