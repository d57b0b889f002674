"""Command line: ``glioma-nb run | study | overlap | validate | synth | cohorts | compare | publish | lab | docs |
bench* | models | segment-* | idc`` (also ``python -m glioma_nb``).

It only parses. Each command group is a module of this package whose ``add(sub)`` adds its commands' arguments
and returns ``{command: handler}``; a handler calls a plain function (:mod:`glioma_nb.api`, the runner, the
benchmarks, publish) and prints what it returns. An error a user can fix is printed as ``error: ...`` (exit 2).
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from glioma_nb import config, io, publish, runs
from glioma_nb.cli import bench, idc, models, run
from glioma_nb.runs import ValidationError
from glioma_nb.segment.errors import SegmentationError
from glioma_nb.sources.idc import IdcError

Handler = Callable[[argparse.Namespace, list[str]], int]
GROUPS = (run, bench, models, idc)     # in the order of glioma-nb --help
ERRORS = (config.ConfigError, io.CohortError, runs.RunError, FileExistsError, SegmentationError, publish.PublishError,
          ValidationError, IdcError)


def parser_and_handlers() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    """The parser of every command, and command -> handler."""
    p = argparse.ArgumentParser(prog="glioma-nb", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    handlers: dict[str, Handler] = {}
    for group in GROUPS:
        handlers.update(group.add(sub))
    return p, handlers


def parser() -> argparse.ArgumentParser:
    """The parser of every command (the documentation's command-line page is generated from it)."""
    return parser_and_handlers()[0]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(argv) if argv is not None else sys.argv[1:]
    p, handlers = parser_and_handlers()
    args = p.parse_args(argv)
    args.parser = p          # the docs command generates the command-line page from the whole parser
    try:
        return int(handlers[args.command](args, argv) or 0)
    except ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
