"""Command line of stage one: ``python -m featcache.extract {run,layers,list}``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import fields
from pathlib import Path

from featcache.errors import run_command
from featcache.extract.backbones.pictures import show as show_pictures
from featcache.extract.backbones.registry import get_spec, list_backbones
from featcache.extract.cache.hdf5 import FeatureCache
from featcache.extract.config import ExtractConfig
from featcache.extract.data.datasets import DATASETS
from featcache.extract.pipeline import describe_layers, run_extraction
from featcache.options import EXTRACT, add_arguments, comma_names, defaults

DEFAULTS = defaults(EXTRACT)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m featcache.extract", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser(
        "run",
        help="extract features into an HDF5 cache (resumes if interrupted); prints its path",
    )
    add_arguments(run, EXTRACT)
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    layers = sub.add_parser("layers", help="list a backbone's layer taps with their shapes")
    layers.add_argument("--backbone", default=DEFAULTS["backbone"], help="[%(default)s]")
    layers.add_argument(
        "--res",
        dest="resolution",
        type=int,
        default=None,
        help="input resolution for the shapes [the backbone's input size]",
    )
    sub.add_parser("list", help="list registered backbones and datasets")
    show = sub.add_parser(
        "show", help="plot the first conv layer's filters and one image's activation maps"
    )
    show.add_argument("--backbone", default=DEFAULTS["backbone"], help="[%(default)s]")
    show.add_argument("--image", type=Path, required=True, help="any image file")
    show.add_argument(
        "--layers", type=comma_names, default=("block1", "block7"),
        help="convolutional taps to show [block1,block7]",
    )
    show.add_argument("--out", type=Path, default=Path("data/pictures"), help="[%(default)s]")
    return parser


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """What is written to stdout meanwhile (Ray's worker messages, from Python or C++) goes
    to stderr: stdout carries the cache's path alone."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _run(args: argparse.Namespace) -> None:
    options = {
        f.name: getattr(args, f.name) for f in fields(ExtractConfig) if hasattr(args, f.name)
    }
    with _stdout_to_stderr():
        result = run_extraction(ExtractConfig(**options), progress=not args.quiet)
    with FeatureCache(result.path) as cache:
        shapes = ", ".join(
            f"{s}/{layer} {cache.shape(s, layer)}"
            for s in cache.splits
            for layer in cache.layers(s)
        )
    if result.cached:
        summary = f"cache hit ({result.seconds:.1f} s, no model loaded)"
    else:
        rate = result.images / max(result.seconds, 1e-9)
        summary = (
            f"wrote {result.images} images in {result.seconds:.1f} s ({rate:.1f} img/s; "
            f"{result.shards} shards, {result.worker}, engine {result.engine})"
        )
    print(f"{summary}\n  {shapes}", file=sys.stderr)
    print(result.path)


def _layers(args: argparse.Namespace) -> None:
    spec = get_spec(args.backbone)
    print(f"{spec.name}: input {args.resolution or spec.input_size}px, weights {spec.weights}")
    for alias, node, shape in describe_layers(args.backbone, args.resolution):
        print(f"  {alias:<10} {node:<40} {shape}")


def _list(_: argparse.Namespace) -> None:
    print("backbones:", ", ".join(list_backbones()),
          "(or any torchvision model name, or timm/<model>)")
    for name, entry in DATASETS.items():
        print(f"dataset {name:<9} {entry.description}")
    print("dataset <dir>     a folder of class folders, optionally under train/ val/ test/")
    print("dataset <x.csv>   a manifest: path,label[,split], paths relative to it")


def _show(args: argparse.Namespace) -> None:
    for path in show_pictures(args.backbone, args.image, args.layers, args.out):
        print(path)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    commands = {"run": _run, "layers": _layers, "list": _list, "show": _show}
    return run_command(
        "extract",
        lambda: commands[args.command](args),
        resume_hint="finished shards are kept; re-run the same command to resume",
    )
