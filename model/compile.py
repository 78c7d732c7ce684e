"""Compile FLUX.1 for one image shape into a published artifact directory named by its cache key.

    python -m model.compile --shape 256x144 --model tiny --backend cpu --out DIR

prints the artifact directory as its last stdout line and exits 0 when it is published
(now or before). ``--resolve`` only prints where the options' artifact lives: exit 0 if it
is published, 3 if not. Errors are one line on stderr: exit 2 for bad options, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import multiprocessing
import platform
import re
import socket
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from common.artifacts import COMPILE_CODE_VERSION, EXIT_NOT_PUBLISHED, EXIT_USAGE, MODEL_LIBRARIES
from model.artifacts import MANIFEST_NAME, ArtifactError, publish, read_manifest, unfinished_attempts
from model.backends import (
    BACKENDS,
    NEURON_TARGETS,
    Backend,
    BackendUnavailable,
    compile_in_this_process,
    get_backend,
    installed_versions,
)
from model.components import PIPELINE_CONFIG_NAME, TORCH_DTYPES, VAE_SCALE_FACTOR, GraphSpec, graph_specs
from common.shapes import DTYPES, MAX_TEXT_LENGTH, Shape, parse_dtype, parse_shape
from model.sources import SourceUnavailable, check_revision, key_revision, open_source
from model.tensor_parallel import TENSOR_PARALLEL_COMPONENTS, check_tp_degree

EXIT_FAILED = 1

log = logging.getLogger(__name__)
# Component compiles run in processes forked from a server that has already imported the
# compile code (fast to start, nothing of a previous component inherited). Nothing here
# initialises a Neuron runtime, so the children start clean.
_COMPILE_PROCESSES = multiprocessing.get_context("forkserver")
_COMPILE_PROCESSES.set_forkserver_preload(["model.backends"])


class CompileProcessDied(Exception):
    """A component's compile process ended without a result (killed, e.g. out of memory)."""


@dataclass(frozen=True)
class CompileOptions:
    model: str
    revision: str | None
    shape: Shape
    dtype: str = "bfloat16"
    backend: str = "cpu"
    tp_degree: int = 1
    max_text_length: int = MAX_TEXT_LENGTH
    target: str | None = None
    # How many tensor-parallel ranks trace at once (None: NxD's default, all tp_degree). It bounds
    # the compile's host memory, not what is compiled, so it is no part of the cache key.
    max_parallel_compilations: int | None = None

    def __post_init__(self):
        """Refuse option combinations that could not compile, so they never get a cache key."""
        if not isinstance(self.shape, Shape):
            raise ValueError(f"shape must be a Shape (use parse_shape), got {self.shape!r}")
        parse_dtype(self.dtype)
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        check_revision(self.model, self.revision)
        if not 1 <= self.max_text_length <= MAX_TEXT_LENGTH:
            raise ValueError(f"max text length {self.max_text_length} is outside 1..{MAX_TEXT_LENGTH}")
        if self.tp_degree < 1:
            raise ValueError(f"tensor-parallel degree {self.tp_degree} must be at least 1")
        if self.backend == "cpu" and (self.tp_degree != 1 or self.target is not None):
            raise ValueError("the cpu backend runs on one device: it takes no --target and --tp-degree 1")
        if self.backend == "neuron" and self.target not in NEURON_TARGETS:
            raise ValueError(f"the neuron backend needs --target, one of {', '.join(NEURON_TARGETS)}")
        if self.max_parallel_compilations is not None and self.max_parallel_compilations < 1:
            raise ValueError(f"--max-parallel-compilations {self.max_parallel_compilations} must be at least 1")


def cache_key(options: CompileOptions, toolchain: dict[str, str]) -> dict:
    """Everything that changes the compiled graphs. Any difference means a different directory."""
    return {
        "model": options.model,
        "revision": key_revision(options.model, options.revision),
        "shape": str(options.shape),
        "dtype": options.dtype,
        "backend": options.backend,
        "target": options.target,
        "tp_degree": options.tp_degree,
        "max_text_length": options.max_text_length,
        # The traced code comes from diffusers and transformers as much as from the compiler.
        "toolchain": {**toolchain, **installed_versions(MODEL_LIBRARIES)},
        "compile_code_version": COMPILE_CODE_VERSION,
    }


def artifact_name(key: dict) -> str:
    """A readable prefix for humans, a hash of the whole key for correctness."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    model = re.sub(r"[^A-Za-z0-9._-]+", "-", key["model"])
    revision = key["revision"][:12]
    target = f"-{key['target']}" if key["target"] else ""
    return f"{model}-{revision}-{key['shape']}-{key['dtype']}-{key['backend']}{target}-tp{key['tp_degree']}-{digest}"


def _artifact_dir(options: CompileOptions, out_root: Path, backend: Backend) -> tuple[Path, dict]:
    key = cache_key(options, backend.toolchain_versions())
    return Path(out_root) / artifact_name(key), key


def resolve_artifact_dir(options: CompileOptions, out_root: Path) -> Path:
    """Where the artifact for these options lives (published or not), without compiling."""
    return _artifact_dir(options, out_root, get_backend(options.backend))[0]


def is_published(artifact_dir: Path, key: dict) -> bool:
    """True when a manifest for exactly this key exists; raises ArtifactError if it is unusable."""
    try:
        manifest = read_manifest(artifact_dir)
    except ArtifactError:
        if (artifact_dir / MANIFEST_NAME).exists():
            raise
        return False
    if manifest["key"] != key:
        raise ArtifactError(f"the manifest in {artifact_dir} is for another key: {manifest['key']}")
    return True


def ensure_compiled(options: CompileOptions, out_root: Path, scratch: Path | None = None) -> Path:
    """Compile and publish the artifact for ``options`` unless it is already published; return its directory."""
    backend = get_backend(options.backend)
    artifact_dir, key = _artifact_dir(options, out_root, backend)
    if is_published(artifact_dir, key):
        log.info("already published: %s", artifact_dir)
        return artifact_dir
    abandoned = unfinished_attempts(artifact_dir)
    if abandoned:
        log.warning(
            "%s has no manifest but %d attempt(s) (interrupted or still running): publishing a fresh one beside %s",
            artifact_dir,
            len(abandoned),
            ", ".join(abandoned),
        )
    if scratch is not None:
        Path(scratch).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flux-compile-", dir=scratch) as work:
        staged = Path(work, "artifact")
        timings = _compile_into(staged, Path(work, "compiler"), options)
        won = publish(staged, artifact_dir, _manifest_fields(artifact_dir.name, key, timings))
    if won:
        log.info("published %s", artifact_dir)
    else:
        log.info("another compile published %s first; its artifact is used", artifact_dir)
        is_published(artifact_dir, key)
    return artifact_dir


def _compile_into(staged: Path, workdir: Path, options: CompileOptions) -> dict:
    """Write every file serving needs under ``staged``; return the timings."""
    started = time.perf_counter()
    source = open_source(options.model, options.revision)
    transformer_config, vae_config = source.config("transformer"), source.config("vae")
    if not transformer_config["guidance_embeds"]:
        raise ValueError(f"{options.model} has no guidance embedding: only guidance-distilled FLUX.1 is supported")
    if 2 ** (len(vae_config["block_out_channels"]) - 1) != VAE_SCALE_FACTOR:
        raise ValueError(f"{options.model}'s VAE does not scale by {VAE_SCALE_FACTOR}, which image shapes assume")
    # Before anything compiles: the heads and widths must split evenly across the ranks.
    check_tp_degree(options.tp_degree, {name: source.config(name) for name in TENSOR_PARALLEL_COMPONENTS})
    tokenizer, tokenizer_2 = source.tokenizers()
    timings = {"source_s": round(time.perf_counter() - started, 3), "graphs_s": {}}
    graphs = {}
    specs = graph_specs(
        source, options.shape, TORCH_DTYPES[options.dtype], options.max_text_length, tokenizer.model_max_length
    )
    for spec in specs:
        started = time.perf_counter()
        log.info("compiling %s (%s backend)", spec.component, options.backend)
        layout, pid = _compile_in_own_process(spec, staged / spec.component, workdir, options)
        written = (staged / spec.component).rglob("*")
        files = sorted(path.relative_to(staged).as_posix() for path in written if path.is_file())
        graphs[spec.component] = {"layout": layout, "files": files}
        timings["graphs_s"][spec.component] = round(time.perf_counter() - started, 3)
        log.info("compiled %s in process %d in %.1f s", spec.component, pid, timings["graphs_s"][spec.component])
    tokenizer.save_pretrained(staged / "tokenizer")
    tokenizer_2.save_pretrained(staged / "tokenizer_2")
    source.scheduler().save_config(staged / "scheduler")
    pipeline_config = {
        "shape": str(options.shape),
        "dtype": options.dtype,
        "max_text_length": options.max_text_length,
        "graphs": graphs,
        # The few model settings FluxPipeline reads from its transformer and VAE.
        "transformer": {"in_channels": transformer_config["in_channels"], "guidance_embeds": True},
        "vae": {
            "block_out_channels": list(vae_config["block_out_channels"]),
            "scaling_factor": vae_config["scaling_factor"],
            "shift_factor": vae_config["shift_factor"],
        },
    }
    (staged / PIPELINE_CONFIG_NAME).write_text(json.dumps(pipeline_config, indent=2))
    return timings


def _compile_in_own_process(
    spec: GraphSpec, destination: Path, workdir: Path, options: CompileOptions
) -> tuple[str, int]:
    """One component in a fresh process; returns its layout and that process's id."""
    with ProcessPoolExecutor(max_workers=1, mp_context=_COMPILE_PROCESSES) as process:
        job = process.submit(
            compile_in_this_process,
            options.backend,
            spec,
            destination,
            workdir,
            options.target,
            options.tp_degree,
            options.max_parallel_compilations,
        )
        try:
            return job.result()
        except BrokenProcessPool:
            raise CompileProcessDied(
                f"the process compiling {spec.component} died without a result (killed: out of memory? "
                f"--max-parallel-compilations bounds the tensor-parallel compiles' memory)"
            ) from None


def _manifest_fields(name: str, key: dict, timings: dict) -> dict:
    versions = {"python": platform.python_version(), **installed_versions(("tokenizers",)), **key["toolchain"]}
    return {
        "artifact": name,
        "key": key,
        "versions": versions,
        "timings": timings,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
    }


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _parse_options(args: argparse.Namespace) -> CompileOptions:
    return CompileOptions(
        model=args.model,
        revision=args.revision,
        shape=parse_shape(args.shape),
        dtype=args.dtype,
        backend=args.backend,
        tp_degree=args.tp_degree,
        max_text_length=args.max_text_length,
        target=args.target,
        max_parallel_compilations=args.max_parallel_compilations,
    )


def main(argv: list[str] | None = None) -> int:
    parser = _OneLineParser(prog="python -m model.compile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", required=True, help="HxW in pixels, height first, multiples of 16")
    parser.add_argument("--model", required=True, help="'tiny' or a HuggingFace model id")
    parser.add_argument("--revision", help="full commit hash of a HuggingFace model")
    parser.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    parser.add_argument("--backend", default="cpu", choices=BACKENDS)
    parser.add_argument("--tp-degree", type=int, default=1, help="NeuronCores for T5 and the transformer")
    parser.add_argument("--max-text-length", type=int, default=MAX_TEXT_LENGTH, help="T5 tokens")
    parser.add_argument("--target", choices=NEURON_TARGETS, help="Neuron instance family (neuron backend)")
    parser.add_argument(
        "--max-parallel-compilations",
        type=int,
        help="tensor-parallel ranks traced at once, each holding the whole component in host memory "
        "(default: all --tp-degree, NxD's default); not part of the cache key",
    )
    parser.add_argument("--out", required=True, type=Path, help="root of the artifact directories")
    parser.add_argument("--scratch", type=Path, help="local directory for compiler work (default: system temp)")
    parser.add_argument("--resolve", action="store_true", help="print the artifact directory; exit 3 if unpublished")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    try:
        options = _parse_options(args)
    except ValueError as error:
        parser.error(str(error))
    try:
        if args.resolve:
            backend = get_backend(options.backend)
            artifact_dir, key = _artifact_dir(options, args.out, backend)
            print(artifact_dir)
            return 0 if is_published(artifact_dir, key) else EXIT_NOT_PUBLISHED
        print(ensure_compiled(options, args.out, args.scratch))
        return 0
    except (ArtifactError, BackendUnavailable, CompileProcessDied, SourceUnavailable, ValueError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
