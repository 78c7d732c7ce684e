"""What names an artifact: the compile options, and the keys and directory names derived from them.

Two kinds of artifact live under one root (the graph volume):

- the **weights** of a model at one revision, dtype, backend and tensor-parallel degree, sharded once
  per rank, under ``<root>/weights/<name>/``: every image shape takes the same ones;
- the **graphs** of one image shape, without weights, under ``<root>/<name>/``.

Everything here needs only the standard library and the installed distributions' metadata, never
torch or a Neuron package: a serving pod's wait for its artifact resolves keys in a process of tens
of MB (``python -m model.compile --resolve``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from common.artifacts import COMPILE_CODE_VERSION, MODEL_LIBRARIES, WEIGHTS_FORMAT_VERSION
from common.image import NEURON_DLC_IMAGE
from common.neuron import DATA_PARALLEL_DEGREES, NEURON_FAMILIES, TRN2, flux_world_size
from common.shapes import DTYPES, MAX_TEXT_LENGTH, Shape, parse_dtype

CPU = "cpu"
NEURON = "neuron"
BACKENDS = (CPU, NEURON)
# neuronx-cc --target takes the family name.
NEURON_TARGETS = NEURON_FAMILIES
# The distributions whose code ends up in a backend's graphs, as installed where it compiles. The neuron
# backend's are read from their metadata, not imported: a patched compiler build is a new version there.
TOOLCHAINS = {
    CPU: ("torch",),
    NEURON: ("torch", "torch-neuronx", "neuronx-distributed", "neuronx-cc"),
}
# What turns a checkpoint into a backend's per-rank weight files: the libraries that name the tensors
# (diffusers and transformers) and, on neuron, neuronx-distributed's shard_checkpoint.
WEIGHTS_TOOLCHAINS = {CPU: ("torch", "safetensors"), NEURON: ("torch", "safetensors", "neuronx-distributed")}

# The tiny models are built in code (model/tiny.py), in FLUX.1-dev's family and in FLUX.1-schnell's:
# their "revision" is the version of that code.
TINY_MODEL = "tiny"
TINY_SCHNELL = "tiny-schnell"
TINY_MODELS = (TINY_MODEL, TINY_SCHNELL)
# Bump when model/tiny.py changes what it builds.
TINY_REVISION = "tiny-2"
WEIGHTS_DIR = "weights"
# How a backend turns a model into graphs and per-rank weights, by backend and target: part of both keys,
# so artifacts of one implementation are never loaded by another.
MODEL_BUILDER = "modelbuilder"
# NxD Inference's own Flux application, the path Neuron supports for Flux on trn2 (model/backends/nxdi.py).
NXDI = "nxdi"
# Its code builds the graphs and cuts the weights, on top of the neuron backend's toolchain.
NXDI_TOOLCHAIN = ("neuronx-distributed-inference",)
# NxD Inference's Flux application traces T5 for exactly this many tokens and its pipeline asks for them.
NXDI_TEXT_LENGTH = 512


def implementation(backend: str, target: str | None) -> str:
    """The compile API behind a backend and target: the cpu tracer, NxD's ModelBuilder, or on trn2 NxD
    Inference's Flux application."""
    if backend == CPU:
        return CPU
    return NXDI if target == TRN2 else MODEL_BUILDER
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def check_revision(model: str, revision: str | None) -> None:
    """A Hub model needs a full commit hash: branch names move, and the keys must not."""
    if model in TINY_MODELS:
        if revision is not None:
            raise ValueError("the tiny model is built in code and takes no --revision")
    elif revision is None or not _COMMIT.match(revision):
        raise ValueError(
            f"model {model!r} needs --revision set to a full 40-character commit hash "
            f"(got {revision!r}): branch names such as 'main' move and would make the cache key lie"
        )


def key_revision(model: str, revision: str | None) -> str:
    """The revision recorded in the keys; the tiny model's is its code version."""
    return TINY_REVISION if model in TINY_MODELS else revision


# How far an adapter may be scaled either way: past this a LoRA swamps the weights it adapts.
MAX_ADAPTER_SCALE = 8.0
ADAPTER_FIELDS = ("id", "revision", "file", "scale")


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter merged into the weights: a Hub repository at a commit, its weight file (when the
    repository holds several) and the scale its update is added with (diffusers' fuse_lora lora_scale)."""

    repo: str
    revision: str
    scale: float
    file: str | None = None

    def __post_init__(self):
        check_revision(self.repo, self.revision)
        if not (isinstance(self.scale, (int, float)) and math.isfinite(self.scale)
                and 0 < abs(self.scale) <= MAX_ADAPTER_SCALE):
            raise ValueError(f"adapter {self.repo}: scale {self.scale!r} is not a number between "
                             f"-{MAX_ADAPTER_SCALE:g} and {MAX_ADAPTER_SCALE:g} other than 0")

    def key(self) -> dict:
        return {"id": self.repo, "revision": self.revision, "file": self.file, "scale": self.scale}

    @classmethod
    def from_key(cls, key: dict) -> Adapter:
        """The adapter a weights key lists (`key()`'s inverse)."""
        return cls(key["id"], key["revision"], key["scale"], key["file"])


def parse_adapter(text: str) -> Adapter:
    """`id=<repo>,revision=<commit>,scale=<number>[,file=<weights.safetensors>]` (--lora's form)."""
    fields = dict(part.partition("=")[::2] for part in text.split(","))
    unknown, missing = set(fields) - set(ADAPTER_FIELDS), {"id", "revision", "scale"} - set(fields)
    if unknown or missing:
        raise ValueError(f"--lora {text!r}: expected id=<repo>,revision=<commit>,scale=<number>[,file=<name>]"
                         + (f", not {', '.join(sorted(unknown))}" if unknown else "")
                         + (f"; {', '.join(sorted(missing))} missing" if missing else ""))
    try:
        scale = float(fields["scale"])
    except ValueError:
        raise ValueError(f"--lora {text!r}: scale {fields['scale']!r} is not a number") from None
    return Adapter(fields["id"], fields["revision"], scale, fields.get("file") or None)


def adapter_argument(adapter: Adapter) -> str:
    """`--lora`'s value for an adapter (parse_adapter's inverse)."""
    return ",".join(f"{name}={value}" for name, value in adapter.key().items() if value is not None)


@dataclass(frozen=True)
class CompileOptions:
    """What a compile is asked for. ``shape`` is None for the weights alone, which every shape shares."""

    model: str
    revision: str | None
    shape: Shape | None
    dtype: str = "bfloat16"
    backend: str = CPU
    tp_degree: int = 1
    max_text_length: int = MAX_TEXT_LENGTH
    target: str | None = None
    # LoRA adapters merged into the weights, in order; the graphs do not change with them.
    loras: tuple[Adapter, ...] = ()
    # trn2 only (NxD Inference's Flux application): the backbone's work split in two on top of --tp-degree, by
    # image and text tokens (context) or by the true-CFG batch (cfg); at most one of them.
    context_parallel: int = 1
    cfg_parallel: int = 1

    @property
    def world_size(self) -> int:
        """The ranks the graphs run on: the TP degree, times 2 with context or CFG parallelism on trn2."""
        return flux_world_size(self.tp_degree, self.context_parallel, self.cfg_parallel)

    def __post_init__(self):
        """Refuse option combinations that could not compile, so they never get a key."""
        if self.shape is not None and not isinstance(self.shape, Shape):
            raise ValueError(f"shape must be a Shape (use parse_shape), got {self.shape!r}")
        parse_dtype(self.dtype)
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        check_revision(self.model, self.revision)
        if not 1 <= self.max_text_length <= MAX_TEXT_LENGTH:
            raise ValueError(f"max text length {self.max_text_length} is outside 1..{MAX_TEXT_LENGTH}")
        if self.tp_degree < 1:
            raise ValueError(f"tensor-parallel degree {self.tp_degree} must be at least 1")
        if self.backend == CPU and (self.tp_degree != 1 or self.target is not None):
            raise ValueError("the cpu backend runs on one device: it takes no --target and --tp-degree 1")
        if self.backend == NEURON and self.target not in NEURON_TARGETS:
            raise ValueError(f"the neuron backend needs --target, one of {', '.join(NEURON_TARGETS)}")
        self._check_data_parallel()
        if implementation(self.backend, self.target) == NXDI:
            self._check_nxdi()

    def _check_data_parallel(self) -> None:
        for flag, degree in (("--context-parallel", self.context_parallel), ("--cfg-parallel", self.cfg_parallel)):
            if degree not in DATA_PARALLEL_DEGREES:
                raise ValueError(f"{flag} {degree}: NxD Inference's Flux application splits the backbone in two at "
                                 f"most, give {' or '.join(map(str, DATA_PARALLEL_DEGREES))}")
        if self.context_parallel > 1 and self.cfg_parallel > 1:
            raise ValueError("--context-parallel and --cfg-parallel exclude each other in NxD Inference's Flux "
                             "application: give one of them")
        if (self.context_parallel > 1 or self.cfg_parallel > 1) and implementation(self.backend, self.target) != NXDI:
            raise ValueError(f"--context-parallel and --cfg-parallel are NxD Inference's, which runs on "
                             f"--backend {NEURON} --target {TRN2} only")

    def _check_nxdi(self) -> None:
        """What NxD Inference's Flux application fixes, refused here rather than silently changed."""
        if self.model in TINY_MODELS:
            raise ValueError(f"--target {TRN2} compiles NxD Inference's Flux application, which reads a diffusers "
                             f"snapshot from disk: the tiny models are built in code, give a Hub model")
        if self.loras:
            raise ValueError(f"--target {TRN2} shards the weights with NxD Inference's Flux application, which reads "
                             f"the checkpoint itself: LoRA adapters are merged on trn1, trn1n and inf2 only")
        if self.max_text_length != NXDI_TEXT_LENGTH:
            raise ValueError(f"--target {TRN2} compiles NxD Inference's Flux application, whose T5 takes exactly "
                             f"{NXDI_TEXT_LENGTH} tokens: --max-text-length {self.max_text_length} cannot apply")
        if self.context_parallel > 1 and self.shape is not None and self.shape.image_tokens % self.context_parallel:
            raise ValueError(f"--context-parallel {self.context_parallel} splits the image's tokens evenly: {self.shape} "
                             f"has {self.shape.image_tokens}, choose a shape with an even count")


class CompileError(Exception):
    """A compile (or a resolve) that cannot run or finish here; the message says why in one line."""


class ToolchainMissing(CompileError):
    """A distribution a key records is not installed here."""


def installed_versions(distributions: tuple[str, ...]) -> dict[str, str]:
    """The versions pip installed here (what the compile actually runs), by distribution name."""
    try:
        return {name: importlib.metadata.version(name) for name in distributions}
    except importlib.metadata.PackageNotFoundError as error:
        raise ToolchainMissing(
            f"{error.name} is not installed here: the neuron backend's packages (torch-neuronx, neuronx-distributed, "
            f"neuronx-cc) are not on PyPI, run it inside {NEURON_DLC_IMAGE}"
        ) from None


def _nxdi_fields(options: CompileOptions) -> tuple[tuple[str, ...], dict]:
    """What NxD Inference adds to both keys: its distribution, and the degrees on top of TP (world size and
    the sharding of T5 and the backbone follow from them). Other implementations add nothing, so their keys
    and directory names stay what they were."""
    if implementation(options.backend, options.target) != NXDI:
        return (), {}
    return NXDI_TOOLCHAIN, {"context_parallel": options.context_parallel, "cfg_parallel": options.cfg_parallel}


def weights_key(options: CompileOptions) -> dict:
    """Everything that changes the published weights: not the shape, the target or the text length."""
    toolchain, degrees = _nxdi_fields(options)
    return {
        "model": options.model,
        "revision": key_revision(options.model, options.revision),
        "dtype": options.dtype,
        "backend": options.backend,
        "implementation": implementation(options.backend, options.target),
        "tp_degree": options.tp_degree,
        "loras": [adapter.key() for adapter in options.loras],
        **degrees,
        "toolchain": installed_versions(WEIGHTS_TOOLCHAINS[options.backend] + toolchain + MODEL_LIBRARIES),
        "weights_format_version": WEIGHTS_FORMAT_VERSION,
    }


def graphs_key(options: CompileOptions) -> dict:
    """Everything that changes a shape's compiled graphs. Any difference means a different directory."""
    if options.shape is None:
        raise ValueError("graphs are compiled for one image shape: give --shape")
    toolchain, degrees = _nxdi_fields(options)
    return {
        "model": options.model,
        "revision": key_revision(options.model, options.revision),
        "shape": str(options.shape),
        "dtype": options.dtype,
        "backend": options.backend,
        "target": options.target,
        "implementation": implementation(options.backend, options.target),
        "tp_degree": options.tp_degree,
        **degrees,
        "max_text_length": options.max_text_length,
        # The traced code comes from diffusers and transformers as much as from the compiler.
        "toolchain": installed_versions(TOOLCHAINS[options.backend] + toolchain + MODEL_LIBRARIES),
        "compile_code_version": COMPILE_CODE_VERSION,
    }


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _readable(key: dict) -> str:
    model = re.sub(r"[^A-Za-z0-9._-]+", "-", key["model"])
    return f"{model}-{key['revision'][:12]}"


def _degrees(key: dict) -> str:
    """`tp4`, and `-cp2` or `-cfg2` when NxD Inference splits the backbone further."""
    split = "".join(f"-{short}{key[field]}" for field, short in (("context_parallel", "cp"), ("cfg_parallel", "cfg"))
                    if key.get(field, 1) > 1)
    return f"tp{key['tp_degree']}{split}"


def artifact_name(key: dict) -> str:
    """A shape's graphs: a readable prefix for humans, a hash of the whole key for correctness."""
    target = f"-{key['target']}" if key["target"] else ""
    return f"{_readable(key)}-{key['shape']}-{key['dtype']}-{key['backend']}{target}-{_degrees(key)}-{_digest(key)}"


def weights_name(key: dict) -> str:
    adapters = f"-lora{len(key['loras'])}" if key["loras"] else ""
    return f"{_readable(key)}-{key['dtype']}-{key['backend']}-{_degrees(key)}{adapters}-{_digest(key)}"


def graphs_dir(options: CompileOptions, root: Path) -> tuple[Path, dict]:
    key = graphs_key(options)
    return Path(root) / artifact_name(key), key


def weights_dir(options: CompileOptions, root: Path) -> tuple[Path, dict]:
    key = weights_key(options)
    return Path(root) / WEIGHTS_DIR / weights_name(key), key
