"""``python -m featcache.classify {fit,results,tsne}``: argparse into a config, one call each."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from featcache.classify.experiment import FitConfig, run_experiment
from featcache.classify.heads.registry import HEADS
from featcache.classify.runs import format_results, load_runs, pct
from featcache.classify.transforms import TRANSFORMS
from featcache.classify.tsne import TsneConfig, make_tsne
from featcache.errors import run_command
from featcache.options import FIT, QUERY, TSNE, add_arguments, options_for
from featcache.paths import default_data_dir

CACHE_OPTIONS = tuple(o.name for o in options_for(QUERY))
HYPERPARAMETERS = tuple(sorted({name for spec in HEADS.values() for name in spec.options}))
PROTOCOL = ("train_size", "shots", "repeats", "resplit", "val_size", "seed", "jobs", "engine")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _source_options(parser: argparse.ArgumentParser, command: str) -> None:
    add_arguments(parser, command, only=("data_dir",))
    add_arguments(parser.add_mutually_exclusive_group(), command, only=("dataset", "cache"))
    add_arguments(parser, command, only=("layers",))
    add_arguments(parser.add_argument_group(
        "cache options (where several caches of the dataset exist, pick one as extracted)"),
        QUERY)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m featcache.classify",
                     description="Train and compare classifier heads on cached CNN features.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fit = commands.add_parser("fit", help="choose, refit and test one head; write a run folder",
                              description="Choose hyperparameters on a stratified validation "
                              "split of the training rows, refit on all of them, test once.")
    _source_options(fit, FIT)
    heads = "; ".join(f"{name}: {spec.summary}" for name, spec in HEADS.items())
    add_arguments(fit, FIT, only=("model", "transform", "dim"),
                  choices={"model": list(HEADS), "transform": list(TRANSFORMS)})
    fit.epilog = f"heads: {heads}"
    add_arguments(fit.add_argument_group("hyperparameters (a given value is fixed and not swept)"),
                  FIT, only=HYPERPARAMETERS)
    add_arguments(fit.add_argument_group("protocol"), FIT, only=PROTOCOL)
    add_arguments(fit, FIT, only=("tag", "skip_existing"))

    results = commands.add_parser("results", help="every run so far, one table per dataset, "
                                  "best validation score first")
    results.add_argument("--data-dir", type=Path,
                         default=default_data_dir())
    results.add_argument("--dataset", help="only this dataset (its name or its path)")
    results.add_argument("--tag", help="only runs with this tag")

    tsne = commands.add_parser("tsne", help="2-D t-SNE map of test features (PNG)")
    _source_options(tsne, TSNE)
    add_arguments(tsne, TSNE, only=("points", "seed"))
    return parser


def _fit(args: argparse.Namespace, argv: Sequence[str]) -> int:
    params = {name: getattr(args, name) for name in HYPERPARAMETERS
              if getattr(args, name) is not None}
    config = FitConfig(
        data_dir=args.data_dir, dataset=args.dataset, cache=args.cache, model=args.model,
        layers=args.layers, transform=args.transform, dim=args.dim, params=params,
        train_size=args.train_size, shots=args.shots, repeats=args.repeats,
        resplit=args.resplit, val_size=args.val_size, seed=args.seed, jobs=args.jobs,
        engine=args.engine, tag=args.tag,
        command=shlex.join(["python", "-m", "featcache.classify", *argv]),
        skip_existing=args.skip_existing, **{k: getattr(args, k) for k in CACHE_OPTIONS},
    )
    run_dir, m = run_experiment(config)
    spread = f" ± {100 * m['top1_std']:.2f}" if m["repeats"] > 1 else ""
    low, high = m["top1_ci"]
    centre = f", centre view {pct(m['top1_centre'])}%" if m["top1_centre"] is not None else ""
    top5 = f", top-5 {pct(m['top5'])}%" if m["top5"] is not None else ""
    val = f"val {pct(m['val_top1'])}% ({m['selection']}); " if m["val_top1"] is not None else ""
    print(f"{m['dataset']} {m['backbone']} {'+'.join(m['layers'])} {m['head']} "
          f"{m['params']}: {val}test top-1 {pct(m['top1'])}%{spread} "
          f"[95% CI {pct(low)}-{pct(high)}], mean per class {pct(m['mean_per_class'])}%"
          f"{centre}{top5}")
    print(f"{'re-used run (same configuration)' if m.get('reused') else 'run'}: {run_dir}")
    return 0


def _results(args: argparse.Namespace) -> int:
    runs = load_runs(args.data_dir, args.dataset, args.tag)
    if not runs:
        print(f"no runs under {args.data_dir / 'runs'}"
              + (f" for dataset {args.dataset!r}" if args.dataset else ""))
        return 0
    print(format_results(runs))
    return 0


def _tsne(args: argparse.Namespace) -> int:
    config = TsneConfig(data_dir=args.data_dir, dataset=args.dataset, cache=args.cache,
                        layers=args.layers, points=args.points, seed=args.seed,
                        **{k: getattr(args, k) for k in CACHE_OPTIONS})
    print(make_tsne(config))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run one command; bad input gives one line on stderr and status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    commands = {"fit": lambda: _fit(args, argv), "results": lambda: _results(args),
                "tsne": lambda: _tsne(args)}
    return run_command(f"python -m featcache.classify {args.command}", commands[args.command],
                       resume_hint="nothing was written; re-run the same command")
