"""Credential-free plan: render a stack offline, check the rendering, write it as reviewable YAML.

    python -m planning --stack dev --out plans      # writes plans/dev/ (and its capacity.md)
    python -m planning --stack all --check          # exits 1 with a report if any check fails

The rendering is the real program run under mocks (`planning.offline`), written by `planning.render`
and checked by `planning.checks`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pulumi

from planning import COMMAND
from planning.checks import check, report
from planning.offline import run_program, stack_names
from planning.render import write_plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True, choices=[*stack_names(), "all"])
    parser.add_argument("--out", type=Path, help="write the rendering under OUT/<stack>/")
    parser.add_argument("--check", action="store_true", help="validate the rendering; exit 1 on any problem")
    args = parser.parse_args(argv)
    if not args.out and not args.check:
        parser.error("nothing to do: pass --out DIR, --check, or both")
    failed = False
    for stack in stack_names() if args.stack == "all" else [args.stack]:
        try:
            rendering = run_program(stack)
        except pulumi.RunError as error:  # a config the program rejects: its one-line message, no traceback
            print(f"{stack}: {error}")
            failed = True
            continue
        if args.out:
            print(f"{stack}: wrote {write_plan(rendering, args.out)}")
        if args.check:
            problems = check(rendering)
            print(report(rendering, problems))
            failed |= bool(problems)
    return 1 if failed else 0
