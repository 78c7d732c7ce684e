"""Compile FLUX.1 and publish it under a root directory, keyed by what it was compiled from.

    python -m model.compile --model tiny --backend cpu --out DIR --shape 256x144            # weights, then graphs
    python -m model.compile ... --shape 256x144 --graphs-only                               # the shape's graphs
    python -m model.compile ... --weights                                                   # the weights alone

The weights are published once per model, revision, dtype, backend and tensor-parallel degree and taken
by every shape's graphs (model/build.py). The last stdout line is the published directory; exit 0 when it
is published (now or before). ``--resolve`` only prints where the options' artifact lives: exit 0 if it is
published (with ``--shape``: its graphs and the weights they take), 3 if not; it imports neither torch nor
a Neuron package. Errors are one line on stderr: exit 2 for bad options, 1 otherwise. The log is JSON
lines on stderr, with progress events (common/progress.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from common.adapters import parse_adapter
from common.artifacts import EXIT_NOT_PUBLISHED, EXIT_USAGE
from common.logs import configure_json_logging
from common.shapes import DTYPES, MAX_TEXT_LENGTH, parse_shape
from model.artifacts import ArtifactError, is_published
from model.families import UnsupportedModel
from model.keys import (
    BACKENDS, NEURON_TARGETS, CompileError, CompileOptions, graphs_dir, weights_dir,
)

EXIT_FAILED = 1

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resolved:
    """Where the options' artifacts live under a root, and whether they are published."""

    directory: Path  # the shape's graphs, or (no shape) the weights: what --resolve prints
    weights: Path    # the weights the options name (their adapters merged)
    published: bool  # the graphs and those weights, or the weights


def resolve(options: CompileOptions, root: Path) -> Resolved:
    weights, weights_key = weights_dir(options, root)
    if options.shape is None:
        return Resolved(weights, weights, is_published(weights, weights_key))
    graphs, graphs_key = graphs_dir(options, root)
    return Resolved(graphs, weights, is_published(graphs, graphs_key) and is_published(weights, weights_key))


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="python -m model.compile", description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--shape", help="HxW in pixels, height first, multiples of 16: that shape's graphs")
    what.add_argument("--weights", action="store_true", help="only the weights every shape of the model takes")
    parser.add_argument("--graphs-only", action="store_true",
                        help="with --shape: its graphs alone; the weights they take are published apart")
    parser.add_argument("--model", required=True, help="'tiny', 'tiny-schnell' or a HuggingFace model id")
    parser.add_argument("--revision", help="full commit hash of a HuggingFace model")
    parser.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    parser.add_argument("--backend", default="cpu", choices=BACKENDS)
    parser.add_argument("--tp-degree", type=int, default=1, help="NeuronCores for T5 and the transformer")
    parser.add_argument("--max-text-length", type=int, default=MAX_TEXT_LENGTH, help="T5 tokens")
    parser.add_argument("--target", choices=NEURON_TARGETS, help="Neuron instance family the graphs run on")
    parser.add_argument("--lora", action="append", default=[], metavar="id=REPO,revision=COMMIT,scale=S[,file=F]",
                        help="a LoRA adapter merged into the weights (repeatable, in order); the graphs stay the same")
    parser.add_argument("--context-parallel", type=int, default=1,
                        help="trn2: 2 splits the backbone's tokens over twice --tp-degree cores")
    parser.add_argument("--cfg-parallel", type=int, default=1,
                        help="trn2: 2 splits the backbone's true-CFG batch over twice --tp-degree cores")
    parser.add_argument("--out", required=True, type=Path, help="root of the published artifacts")
    parser.add_argument("--scratch", type=Path, help="local directory for compiler work (default: system temp)")
    parser.add_argument("--cpus", type=_positive, help="threads of torch and the compiler (the pod's CPU limit)")
    parser.add_argument("--resolve", action="store_true", help="print the artifact directory; exit 3 if unpublished")
    return parser


def options_from(args: argparse.Namespace) -> CompileOptions:
    return CompileOptions(
        model=args.model,
        revision=args.revision,
        shape=None if args.shape is None else parse_shape(args.shape),
        dtype=args.dtype,
        backend=args.backend,
        tp_degree=args.tp_degree,
        max_text_length=args.max_text_length,
        target=args.target,
        loras=tuple(parse_adapter(text) for text in args.lora),
        context_parallel=args.context_parallel,
        cfg_parallel=args.cfg_parallel,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_json_logging()
    try:
        options = options_from(args)
    except ValueError as error:
        parser.error(str(error))
    if args.graphs_only and options.shape is None:
        parser.error("--graphs-only goes with --shape: --weights publishes the weights alone")
    try:
        if args.resolve:
            resolved = resolve(options, args.out)
            print(resolved.directory)
            return 0 if resolved.published else EXIT_NOT_PUBLISHED
        # Only a compile needs torch and the model libraries; resolving must stay small.
        from model.build import ensure_compiled, ensure_graphs, ensure_weights

        if options.shape is None:
            print(ensure_weights(options, args.out, args.scratch, args.cpus))
        elif args.graphs_only:
            print(ensure_graphs(options, args.out, args.scratch, args.cpus))
        else:
            print(ensure_compiled(options, args.out, args.scratch, args.cpus))
        return 0
    except UnsupportedModel as error:
        # The model or an adapter does not fit: every retry would fail the same way.
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ArtifactError, CompileError, ValueError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
