"""`deepdetect-server`: serve | checkpoint | fetch | samples | dataset | evaluate | train | publish | toyset.

Each subcommand module exposes `add_arguments(parser)` and `run(args) -> int` (docs/CONTRACTS.md). Parsing
happens in `main()`, never at import. `fetch` is owned by another module and registered only when it
imports, so the rest of the CLI works without it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__

_SUBCOMMANDS = (
    ("serve", "serve", "run the inference server"),
    ("checkpoint", "checkpoint", "create or inspect a .safetensors checkpoint"),
    ("fetch", "fetch", "download and verify a checkpoint (init container)"),
    ("samples", "runtimes.samples", "pack a folder of images into one int8 sample file"),
    ("dataset", "dataset", "pack or inspect a labelled set (folder, CSV/JSONL manifest)"),
    ("evaluate", "evaluate", "score a labelled set through the serving path; gate on the metrics"),
    ("train", "train", "fine-tune a timm backbone on a labelled set into a checkpoint"),
    ("publish", "publish", "upload a checkpoint and its .sha256 to file://, s3:// or http(s)://"),
    ("toyset", "toyset", "generate a labelled toy set of manipulated and untouched photos"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepdetect-server", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module_name, help_text in _SUBCOMMANDS:
        try:
            module = importlib.import_module(f"deepdetect_server.{module_name}")
        except ImportError:
            if name == "fetch":
                continue  # optional: not built yet, or its dependencies are missing
            raise
        child = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(child)
        child.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
