"""``python -m serving``: pick the artifact directory, then serve it with uvicorn.

Three ways to name the artifact, exactly one per process:

* ``--graphs DIR``: an artifact directory (what ``python -m model.compile`` printed);
* ``--graphs-root ROOT --shape S --model M ...``: the directory the compile options
  resolve to under ROOT, so a pod finds exactly the key its compile Job published;
* ``--local [--shape S] [--model tiny-schnell]``: compile a tiny model (FLUX.1-dev-like, or
  FLUX.1-schnell-like) on the CPU if it is not cached yet, then serve it (no AWS, no Neuron,
  no HuggingFace Hub).

The port is bound first: a port in use (or any bind error) exits 1 in one log line before
anything is read. A directory without a manifest (nothing published there) stops the
process with exit status 1 too. Anything wrong inside a published artifact is found by the
verified load in the background: the server then stays up, never ready, with the reason
in its log and in ``/readyz``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

from common.adapters import parse_adapter
from common.shapes import DTYPES, parse_shape
from model.artifacts import MANIFEST_NAME, ArtifactError
from model.build import ensure_compiled, source_family
from model.compile import resolve
from model.keys import BACKENDS, NEURON_TARGETS, TINY_MODEL, TINY_MODELS, CompileError, CompileOptions
from model.runtime import ServedArtifact, load_generator
from model.sources import open_source
from serving import http_server
from serving.app import DEFAULT_MAX_IMAGES, ServerLimits, create_app
from common.endpoints import DEFAULT_PORT, UNREADY_AFTER_RUNTIME_ERRORS
from serving.health import DEFAULT_RESTART_AFTER_SELF_TESTS, DEFAULT_SELF_TEST_INTERVAL_S, HealthPolicy
from common.logs import configure_json_logging
from serving.logs import redact_prompts
from serving.request_guard import DEFAULT_MAX_BODY_BYTES

PROG = "python -m serving"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_QUEUE_SIZE = 4
DEFAULT_REQUEST_TIMEOUT_S = 300.0
LOCAL_SHAPE = "256x144"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "flux-neuron"
EXIT_NOT_SERVABLE = 1
MAX_PORT = 65535

log = logging.getLogger(__name__)

_COMPILE_DEFAULTS = {field.name: field.default for field in dataclasses.fields(CompileOptions)}


class NotPublished(Exception):
    pass


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is negative" if minimum == 0 else f"{value} is below {minimum}")
        return value

    return parse


def _port(text: str) -> int:
    value = _int_at_least(0)(text)
    if value > MAX_PORT:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port: 0 (any free port) to {MAX_PORT}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def add_artifact_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that name the artifact to serve (shared with bench/http_latency.py)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--graphs", type=Path, metavar="DIR", help="a published artifact directory")
    source.add_argument(
        "--graphs-root",
        type=Path,
        metavar="ROOT",
        help="root of the artifact cache: serve the directory the compile options below resolve to",
    )
    source.add_argument(
        "--local",
        action="store_true",
        help=f"compile a tiny model (--model {' or '.join(TINY_MODELS)}, default {TINY_MODEL}) on the CPU into "
        f"--cache-dir if absent, then serve it (--shape or {LOCAL_SHAPE})",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="artifact cache of --local (default: %(default)s)"
    )
    # Compile options for --graphs-root: same names and defaults as `python -m model.compile`,
    # the defaults taken from CompileOptions itself so the two can never resolve different keys.
    options = parser.add_argument_group("compile options (with --graphs-root; --shape and a tiny --model also with "
                                        "--local)")
    options.add_argument("--shape", help="HxW in pixels, height first")
    options.add_argument("--model", help="'tiny', 'tiny-schnell' or a HuggingFace model id")
    options.add_argument("--revision", help="full commit hash of a HuggingFace model")
    options.add_argument("--dtype", choices=DTYPES, help=f"default: {_COMPILE_DEFAULTS['dtype']}")
    options.add_argument("--backend", choices=BACKENDS, help=f"default: {_COMPILE_DEFAULTS['backend']}")
    options.add_argument("--tp-degree", type=int, help=f"default: {_COMPILE_DEFAULTS['tp_degree']}")
    options.add_argument("--max-text-length", type=int, help=f"default: {_COMPILE_DEFAULTS['max_text_length']}")
    options.add_argument("--target", choices=NEURON_TARGETS, help="Neuron instance family (neuron backend)")
    options.add_argument("--lora", action="append", default=[], metavar="id=REPO,revision=COMMIT,scale=S[,file=F]",
                         help="a LoRA adapter merged into the weights, as the compile was given it (repeatable)")
    options.add_argument("--context-parallel", type=int, help=f"trn2; default: {_COMPILE_DEFAULTS['context_parallel']}")
    options.add_argument("--cfg-parallel", type=int, help=f"trn2; default: {_COMPILE_DEFAULTS['cfg_parallel']}")


def _compile_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> CompileOptions | None:
    """The compile options the flags name; None with --graphs, whose directory is the artifact itself."""
    given = {
        name: getattr(args, name)
        for name in ("dtype", "backend", "tp_degree", "max_text_length", "target", "context_parallel", "cfg_parallel")
        if getattr(args, name) is not None
    }
    named_model = args.model is not None or args.revision is not None or bool(args.lora)
    if args.graphs is not None:
        if given or named_model or args.shape is not None:
            parser.error("--graphs takes no compile options: the directory is the artifact")
        return None
    if args.local and (given or args.revision is not None or args.lora or args.model not in (None, *TINY_MODELS)):
        parser.error(f"--local serves a tiny model on the CPU: of the compile options it takes --shape and --model "
                     f"{' or '.join(TINY_MODELS)} only")
    if not args.local and (args.shape is None or args.model is None):
        parser.error("--graphs-root needs at least --shape and --model")
    try:
        if args.local:
            model = args.model or TINY_MODEL
            return CompileOptions(
                model=model,
                revision=None,
                shape=parse_shape(args.shape or LOCAL_SHAPE),
                dtype="float32",
                backend="cpu",
                # As many T5 tokens as the model's family reads (the tiny models are built in code: no download).
                max_text_length=source_family(model, open_source(model, None, weights=False)).max_text_length,
            )
        return CompileOptions(model=args.model, revision=args.revision, shape=parse_shape(args.shape),
                              loras=tuple(parse_adapter(text) for text in args.lora), **given)
    except ValueError as error:
        parser.error(str(error))


def artifacts_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[Path, Path | None]:
    """The published graphs the flags name, and the weights to load with them (None: those the graphs were
    compiled with); compiles the tiny model first with --local.

    Exits through ``parser.error`` for bad options; raises NotPublished, ArtifactError or CompileError
    when there is nothing to serve.
    """
    options = _compile_options(args, parser)
    if args.local:
        log.info("local mode: compiling %s into %s unless it is there already", options.model, args.cache_dir)
        return ensure_compiled(options, args.cache_dir), None
    if options is None:
        if not (args.graphs / MANIFEST_NAME).is_file():
            raise NotPublished(f"nothing published at {args.graphs} (no {MANIFEST_NAME})")
        return args.graphs, None
    resolved = resolve(options, args.graphs_root)
    if not resolved.published:
        raise NotPublished(f"nothing published at {resolved.directory}, or not the weights its options name: run "
                           f"the compile for these options first")
    return resolved.directory, resolved.weights


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Serve one compiled FLUX.1 image shape over HTTP.")
    add_artifact_arguments(parser)
    server = parser.add_argument_group("server")
    server.add_argument(
        "--host", default=DEFAULT_HOST, help="address to bind (default: %(default)s; the image passes 0.0.0.0)"
    )
    server.add_argument("--port", type=_port, default=DEFAULT_PORT, help="0 picks a free one (default: %(default)s)")
    server.add_argument(
        "--queue-size",
        type=_int_at_least(0),
        default=DEFAULT_QUEUE_SIZE,
        help="requests that may wait behind the running generation; more get 429 (default: %(default)s)",
    )
    server.add_argument(
        "--request-timeout",
        type=_positive_float,
        default=DEFAULT_REQUEST_TIMEOUT_S,
        metavar="SECONDS",
        help="queueing plus generation; longer gets 504 (default: %(default)s)",
    )
    server.add_argument(
        "--max-images",
        type=_int_at_least(1),
        default=DEFAULT_MAX_IMAGES,
        help="largest n of /v1/images/generations (default: %(default)s)",
    )
    server.add_argument(
        "--max-body-bytes",
        type=_int_at_least(1),
        default=DEFAULT_MAX_BODY_BYTES,
        help="larger request bodies get 413 (default: %(default)s)",
    )
    server.add_argument(
        "--limit-concurrency",
        type=_int_at_least(1),
        default=http_server.DEFAULT_LIMIT_CONCURRENCY,
        help="connections plus requests at once; more get 503 (default: %(default)s)",
    )
    server.add_argument(
        "--keep-alive-timeout",
        type=_int_at_least(1),
        default=http_server.DEFAULT_KEEP_ALIVE_TIMEOUT_S,
        metavar="SECONDS",
        help="idle keep-alive connections close after this (default: %(default)s)",
    )
    server.add_argument(
        "--read-timeout",
        type=_positive_float,
        default=http_server.DEFAULT_READ_TIMEOUT_S,
        metavar="SECONDS",
        help="a request's headers and body must arrive within this, or the connection closes (default: %(default)s)",
    )
    server.add_argument(
        "--write-timeout",
        type=_positive_float,
        default=http_server.DEFAULT_WRITE_TIMEOUT_S,
        metavar="SECONDS",
        help="a client that reads nothing of what it is sent for this long is disconnected (default: %(default)s)",
    )
    health = parser.add_argument_group("health (what runtime errors of the pipeline do to /readyz and /healthz)")
    health.add_argument(
        "--unready-after-errors",
        type=_int_at_least(1),
        default=UNREADY_AFTER_RUNTIME_ERRORS,
        metavar="N",
        help="consecutive generations failing with a runtime error (a 500) that turn /readyz 503 until one "
        "succeeds; client errors, 429, 504 and clients that left do not count (default: %(default)s)",
    )
    health.add_argument(
        "--self-test-interval",
        type=_positive_float,
        default=DEFAULT_SELF_TEST_INTERVAL_S,
        metavar="SECONDS",
        help="while unready for runtime errors, run a two-step self-test generation this often; "
        "a success makes the server ready again (default: %(default)s)",
    )
    health.add_argument(
        "--restart-after-self-tests",
        type=_int_at_least(1),
        default=DEFAULT_RESTART_AFTER_SELF_TESTS,
        metavar="M",
        help="consecutive failed self-tests that turn /healthz 503, so the kubelet restarts the container "
        "(default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_json_logging()
    redact_prompts()
    connection_limits = http_server.ConnectionLimits(
        limit_concurrency=args.limit_concurrency,
        keep_alive_timeout=args.keep_alive_timeout,
        read_timeout=args.read_timeout,
        write_timeout=args.write_timeout,
    )
    try:
        http_server.ensure_fd_limit(args.limit_concurrency)
    except ValueError as error:
        parser.error(str(error))
    try:
        sock = http_server.bind(args.host, args.port)
    except OSError as error:
        log.error("not serving: cannot listen on %s:%d: %s", args.host, args.port, error.strerror or error)
        return EXIT_NOT_SERVABLE
    with sock:
        try:
            artifact_dir, weights_dir = artifacts_from_args(args, parser)
            served = ServedArtifact.read(artifact_dir, weights_dir)
        except (NotPublished, ArtifactError, CompileError) as error:
            log.error("not serving: %s", error)
            return EXIT_NOT_SERVABLE
        log.info("serving %s on http://%s:%d", artifact_dir, *sock.getsockname()[:2])
        app = create_app(
            partial(load_generator, artifact_dir, weights_dir, expected=served),
            served,
            ServerLimits(
                queue_size=args.queue_size,
                request_timeout=args.request_timeout,
                max_body_bytes=args.max_body_bytes,
                max_images=args.max_images,
            ),
            HealthPolicy(
                unready_after_errors=args.unready_after_errors,
                self_test_interval=args.self_test_interval,
                restart_after_self_tests=args.restart_after_self_tests,
            ),
        )
        # log_config=None: uvicorn's own lines go through the JSON handler above, one format
        # for the whole process. Uvicorn drains in-flight requests on SIGTERM.
        http_server.server(app, sock, connection_limits, log_config=None).run(sockets=[sock])
    return 0
