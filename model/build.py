"""Build and publish what a shape serves from: the model's weights, once for every shape, and the shape's
graphs, which take them.

- Weights (``<root>/weights/<name>/``): each component's state dict cut into one file per tensor-parallel
  rank its graph runs on, and ``weights.json`` naming them. Keyed by model, revision, dtype, backend and
  degree (model.keys.weights_key), so a second shape, or a second stack of the same model, publishes none.
- Graphs (``<root>/<name>/``): each component's compiled graph without weights, the tokenizers, the
  scheduler and ``pipeline.json`` (how serving assembles the pipeline, and the layout of the weights each
  graph takes). Compiling them needs the model's configs, never its weights.

Both are published by model/artifacts.py's protocol (files first, manifest last); each component is
compiled or sharded in a process of its own, so its memory goes back to the OS before the next one starts.
Progress goes to the log as common/progress.py events.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import multiprocessing
import os
import platform
import socket
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch

from common import progress
from common.logs import configure_json_logging, route_library_loggers
from model.artifacts import is_published, publish, unfinished_attempts
from model.adapters import check_targets, fetch
from model.backends import CompileSettings, NxdiSettings, get_backend, ranks
from model.components import (
    PIPELINE_CONFIG_NAME, TENSOR_PARALLEL_COMPONENTS, TORCH_DTYPES, VAE_SCALE_FACTOR, WEIGHTS_CONFIG_NAME, GraphSpec,
    graph_specs, layout_digest, weight_specs,
)
from model.keys import (
    NXDI, CompileError, CompileOptions, artifact_name, graphs_dir, graphs_key, implementation, installed_versions,
    weights_dir, weights_key, weights_name,
)
from model.families import Family, UnsupportedModel, family_of
from model.sources import ModelSource, open_source
from model.tensor_parallel import check_tp_degree

log = logging.getLogger(__name__)
# Components run in processes forked from a server that has already imported the model code (fast to
# start, nothing of a previous component inherited).
_COMPONENT_PROCESSES = multiprocessing.get_context("forkserver")
_COMPONENT_PROCESSES.set_forkserver_preload(["model.components"])


class CompileProcessDied(CompileError):
    """A component's process ended without a result (killed, e.g. out of memory)."""


def ensure_compiled(options: CompileOptions, root: Path, scratch: Path | None = None, cpus: int | None = None) -> Path:
    """Publish the weights (unless they are) and the shape's graphs (unless they are); return the graphs' directory."""
    ensure_weights(options, root, scratch, cpus)
    return ensure_graphs(options, root, scratch, cpus)


def ensure_weights(options: CompileOptions, root: Path, scratch: Path | None = None, cpus: int | None = None) -> Path:
    artifact_dir, key = weights_dir(options, root)
    return _ensure(progress.WEIGHTS, artifact_dir, key, scratch,
                   lambda staged, work: _shard_weights_into(staged, options, cpus))


def ensure_graphs(options: CompileOptions, root: Path, scratch: Path | None = None, cpus: int | None = None) -> Path:
    artifact_dir, key = graphs_dir(options, root)
    return _ensure(progress.GRAPHS, artifact_dir, key, scratch,
                   lambda staged, work: _compile_graphs_into(staged, work, options, cpus))


def _ensure(kind: str, artifact_dir: Path, key: dict, scratch: Path | None,
            build: Callable[[Path, Path], dict]) -> Path:
    """Build (`build(staged, workdir)` -> extra manifest fields) and publish one artifact unless it is published."""
    name = artifact_dir.name
    if is_published(artifact_dir, key):
        progress.log_event(log, progress.ALREADY_PUBLISHED, f"{kind} already published: {artifact_dir}",
                           kind=kind, artifact=name)
        return artifact_dir
    abandoned = unfinished_attempts(artifact_dir)
    if abandoned:
        log.warning("%s has no manifest but %d attempt(s) (interrupted or still running): publishing a fresh one "
                    "beside %s", artifact_dir, len(abandoned), ", ".join(abandoned))
    if scratch is not None:
        Path(scratch).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix=f"flux-{kind}-", dir=scratch) as work:
            staged = Path(work, "artifact")
            staged.mkdir()
            fields = build(staged, Path(work, "compiler"))
            won = publish(staged, artifact_dir, _manifest_fields(name, key, fields))
    except Exception as error:
        progress.log_event(log, progress.FAILED, f"{kind} failed: {error}", kind=kind, error=str(error).splitlines()[0])
        raise
    if not won:
        log.info("another compile published %s first; its artifact is used", artifact_dir)
        is_published(artifact_dir, key)
    progress.log_event(log, progress.PUBLISHED, f"{kind} published: {artifact_dir}", kind=kind, artifact=name,
                       elapsed_s=round(time.monotonic() - started, 1))
    return artifact_dir


def _manifest_fields(name: str, key: dict, fields: dict) -> dict:
    versions = {"python": platform.python_version(), **installed_versions(("tokenizers",)), **key["toolchain"]}
    return {
        "artifact": name,
        "key": key,
        "versions": versions,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        **fields,
    }


def source_family(model: str, source: ModelSource) -> Family:
    """The family a model's own configs describe (model/families.py); UnsupportedModel if none."""
    return family_of(model, source.pipeline_class(), source.config("transformer"), source.config("vae"),
                     dict(source.scheduler().config))


def _checked_source(options: CompileOptions, weights: bool) -> tuple[ModelSource, Family]:
    """The model's source and family, refused before anything runs if its architecture is not one these graphs
    fit or the options do not fit it."""
    source = open_source(options.model, options.revision, weights=weights)
    family = source_family(options.model, source)
    if 2 ** (len(source.config("vae")["block_out_channels"]) - 1) != VAE_SCALE_FACTOR:
        raise UnsupportedModel(f"{options.model}'s VAE does not scale by {VAE_SCALE_FACTOR}, which image shapes assume")
    if options.max_text_length > family.max_text_length:
        raise UnsupportedModel(f"--max-text-length {options.max_text_length}: {options.model} is {family.name}, "
                               f"which reads at most {family.max_text_length} T5 tokens")
    # Before anything runs: the heads and widths must split evenly across the ranks (and on trn2 fit its cores).
    if implementation(options.backend, options.target) == NXDI:
        from model.backends.nxdi import APPLICATIONS, check_degrees

        check_degrees(options, {folder: source.config(folder) for folder, _, _ in APPLICATIONS.values()})
    else:
        check_tp_degree(options.tp_degree, {name: source.config(name) for name in TENSOR_PARALLEL_COMPONENTS})
    return source, family


def _settings(options: CompileOptions, cpus: int | None, source: ModelSource) -> CompileSettings:
    nxdi = None
    if implementation(options.backend, options.target) == NXDI:
        # A Hub snapshot: CompileOptions refuses the tiny model, built in code, on trn2.
        nxdi = NxdiSettings(model_dir=source.path, shape=options.shape, dtype=options.dtype,
                            context_parallel=options.context_parallel, cfg_parallel=options.cfg_parallel)
    return CompileSettings(target=options.target, tp_degree=options.tp_degree, cpus=cpus, nxdi=nxdi)


def _compile_graphs_into(staged: Path, workdir: Path, options: CompileOptions, cpus: int | None) -> dict:
    started = time.monotonic()
    source, family = _checked_source(options, weights=False)
    tokenizer, tokenizer_2 = source.tokenizers()
    timings = {"source_s": round(time.monotonic() - started, 3), "graphs_s": {}}
    specs = graph_specs(source, options.shape, TORCH_DTYPES[options.dtype], options.max_text_length,
                        tokenizer.model_max_length)
    steps = [spec.component for spec in specs]
    progress.log_event(log, progress.STARTED, f"compiling the graphs of {options.shape} ({options.backend})",
                       kind=progress.GRAPHS, artifact=artifact_name(graphs_key(options)), steps=steps)
    graphs, layouts = {}, {}
    for index, spec in enumerate(specs, 1):
        step = {"kind": progress.GRAPHS, "step": spec.component, "index": index, "count": len(specs)}
        progress.log_event(log, progress.STEP_STARTED, f"compiling {spec.component} ({index} of {len(specs)})", **step)
        started = time.monotonic()
        layout, pid = _in_own_process(compile_component, options.backend, spec, staged / spec.component, workdir,
                                      _settings(options, cpus, source))
        elapsed = timings["graphs_s"][spec.component] = round(time.monotonic() - started, 3)
        graphs[spec.component] = {"files": _files_under(staged, spec.component)}
        layouts[spec.component] = layout_digest(layout)
        progress.log_event(log, progress.STEP_FINISHED, f"compiled {spec.component} in {elapsed:.1f} s",
                           elapsed_s=elapsed, pid=pid, **step)
    tokenizer.save_pretrained(staged / "tokenizer")
    tokenizer_2.save_pretrained(staged / "tokenizer_2")
    source.scheduler().save_config(staged / "scheduler")
    transformer_config, vae_config = source.config("transformer"), source.config("vae")
    pipeline_config = {
        "shape": str(options.shape),
        "dtype": options.dtype,
        "max_text_length": options.max_text_length,
        # What requests may ask of this model (model/families.py): serving's defaults and bounds.
        "family": family.name,
        "graphs": graphs,
        # Serving checks the weights it loads against these, component by component.
        "weights_layouts": layouts,
        # The few model settings FluxPipeline and the rotary tables read from the transformer and the VAE.
        "transformer": {"in_channels": transformer_config["in_channels"],
                        "guidance_embeds": transformer_config["guidance_embeds"],
                        "axes_dims_rope": list(transformer_config["axes_dims_rope"])},
        "vae": {
            "block_out_channels": list(vae_config["block_out_channels"]),
            "scaling_factor": vae_config["scaling_factor"],
            "shift_factor": vae_config["shift_factor"],
        },
    }
    (staged / PIPELINE_CONFIG_NAME).write_text(json.dumps(pipeline_config, indent=2))
    # The weights of the base model these graphs take (adapters give other weights of the same layout):
    # their key, and the directory name it gives under the root.
    key = weights_key(dataclasses.replace(options, loras=()))
    return {"timings": timings, "weights": {"artifact": weights_name(key), "key": key}}


def _shard_weights_into(staged: Path, options: CompileOptions, cpus: int | None) -> dict:
    started = time.monotonic()
    source, _ = _checked_source(options, weights=True)
    adapters = tuple(fetch(adapter) for adapter in options.loras)
    check_targets(list(adapters))
    timings = {"source_s": round(time.monotonic() - started, 3), "shards_s": {}}
    specs = weight_specs(source, TORCH_DTYPES[options.dtype], adapters)
    settings = _settings(options, cpus, source)
    rank_counts = [ranks(spec, settings) for spec in specs]
    steps = [f"{spec.component} rank {rank}" for spec, count in zip(specs, rank_counts) for rank in range(count)]
    progress.log_event(log, progress.STARTED, f"sharding the weights at TP {options.tp_degree} ({options.backend})",
                       kind=progress.WEIGHTS, artifact=weights_name(weights_key(options)), steps=steps)
    components = {}
    for spec, offset in zip(specs, [sum(rank_counts[:i]) for i in range(len(specs))]):
        started = time.monotonic()
        files, layout = _in_own_process(shard_component, options.backend, spec, staged / spec.component,
                                        settings, offset, len(steps))
        timings["shards_s"][spec.component] = round(time.monotonic() - started, 3)
        components[spec.component] = {"files": [f"{spec.component}/{name}" for name in files],
                                      "layout": layout_digest(layout)}
    weights_config = {"dtype": options.dtype, "tp_degree": options.tp_degree,
                      "loras": [adapter.key() for adapter in options.loras], "components": components}
    (staged / WEIGHTS_CONFIG_NAME).write_text(json.dumps(weights_config, indent=2))
    return {"timings": timings}


def _files_under(staged: Path, component: str) -> list[str]:
    return sorted(path.relative_to(staged).as_posix() for path in (staged / component).rglob("*") if path.is_file())


def _in_own_process(work: Callable, *args):
    """`work(*args)` in a fresh process; its result."""
    with ProcessPoolExecutor(max_workers=1, mp_context=_COMPONENT_PROCESSES) as process:
        job = process.submit(work, *args)
        try:
            return job.result()
        except BrokenProcessPool:
            raise CompileProcessDied(
                f"the process running {work.__name__} for {args[1].component} died without a result "
                f"(killed: out of memory?)"
            ) from None


def _component_process(backend_name: str, target: str | None, cpus: int | None):
    """What every component's process does first: the one log format, threads bounded to the pod's CPUs
    (torch's, and through OMP_NUM_THREADS the compiler's, which it starts as processes), and the backend."""
    configure_json_logging()
    if cpus is not None:
        os.environ["OMP_NUM_THREADS"] = str(cpus)
        torch.set_num_threads(cpus)
    backend = get_backend(backend_name, target, compiling=True)
    # The backend imported libraries that log through handlers of their own (neuronx-distributed).
    route_library_loggers()
    return backend


def compile_component(backend_name: str, spec: GraphSpec, destination: Path, workdir: Path,
                      settings: CompileSettings) -> tuple[dict, int]:
    """One component's graph, in its own process; the layout of the weights it takes, and the process's id."""
    backend = _component_process(backend_name, settings.target, settings.cpus)
    return backend.compile_graph(spec, destination, workdir, settings), os.getpid()


def shard_component(backend_name: str, spec: GraphSpec, destination: Path, settings: CompileSettings,
                    first_step: int, steps: int) -> tuple[list[str], dict]:
    """One component's weights, one file per rank, in its own process; the files and their layout."""
    backend = _component_process(backend_name, settings.target, settings.cpus)
    last_rank = ranks(spec, settings) - 1

    def step(rank: int) -> dict:
        return {"kind": progress.WEIGHTS, "step": f"{spec.component} rank {rank}", "index": first_step + rank + 1,
                "count": steps}

    started = [time.monotonic()]
    progress.log_event(log, progress.STEP_STARTED, f"sharding {spec.component}", **step(0))

    def written(rank: int) -> None:
        now = time.monotonic()
        progress.log_event(log, progress.STEP_FINISHED, f"sharded {spec.component} rank {rank}",
                           elapsed_s=round(now - started[0], 3), pid=os.getpid(), **step(rank))
        started[0] = now
        if rank < last_rank:
            progress.log_event(log, progress.STEP_STARTED, f"sharding {spec.component} rank {rank + 1}",
                               **step(rank + 1))

    return backend.shard_weights(spec, destination, settings, written)
