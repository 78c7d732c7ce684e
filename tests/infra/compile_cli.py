"""The command line of `python -m model.compile` that the pods run, as issue 17 specifies it for the ModelBuilder
compile (model/ implements it; until that lands on this branch, the rendered commands are checked against this
statement of it, and once both are merged the real parser must accept everything this one does):

    python -m model.compile --model M --revision R --dtype D --backend neuron --target T --tp-degree N \
        [--context-parallel N --cfg-parallel N] --max-text-length L --out /graphs [--scratch DIR] [--cpus N] \
        ( --weights | --shape S [--graphs-only] ) [--lora id=REPO,revision=COMMIT,scale=S[,file=F]]... [--resolve]

The two data-parallel degrees are trn2's (issue 19): its pods pass both or neither.

`--resolve` goes with `--shape` only, and `--graphs-only` never with `--weights`.
"""

from __future__ import annotations

import argparse

from common.shapes import DTYPES, parse_shape
from common.neuron import NEURON_FAMILIES


class ContractError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise ContractError(message)


def _parser() -> _Parser:
    parser = _Parser(prog="python -m model.compile")
    parser.add_argument("--model", required=True)
    parser.add_argument("--revision", required=True)
    parser.add_argument("--dtype", required=True, choices=DTYPES)
    parser.add_argument("--backend", required=True, choices=["neuron"])
    parser.add_argument("--target", required=True, choices=NEURON_FAMILIES)
    parser.add_argument("--tp-degree", required=True, type=int)
    parser.add_argument("--context-parallel", type=int, choices=[1, 2])
    parser.add_argument("--cfg-parallel", type=int, choices=[1, 2])
    parser.add_argument("--max-text-length", required=True, type=int)
    parser.add_argument("--out", required=True)
    parser.add_argument("--scratch")
    parser.add_argument("--cpus", type=int)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--weights", action="store_true")
    what.add_argument("--shape", type=parse_shape)
    parser.add_argument("--graphs-only", action="store_true")
    parser.add_argument("--resolve", action="store_true")
    parser.add_argument("--lora", action="append", default=[])
    return parser


def parse(args: list[str]) -> argparse.Namespace:
    """The options of a `model.compile` command line (what follows `-m model.compile`), or ContractError."""
    options = _parser().parse_args(args)
    if options.weights and (options.graphs_only or options.resolve):
        raise ContractError("--graphs-only and --resolve go with --shape, not --weights")
    if options.graphs_only and options.lora:
        raise ContractError("adapters change the weights only: a graphs Job takes no --lora")
    if (options.context_parallel is None) != (options.cfg_parallel is None):
        raise ContractError("--context-parallel and --cfg-parallel go together")
    if options.cpus is not None and options.cpus < 1:
        raise ContractError("--cpus must be at least 1")
    return options


def after_module(command: list[str]) -> list[str]:
    """The arguments of a command that runs `python -m model.compile ...`."""
    return command[command.index("model.compile") + 1:]
