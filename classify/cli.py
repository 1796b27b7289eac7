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
from featcache.classify.features import DEFAULT_LAYERS
from featcache.classify.heads.registry import DEFAULT_HEAD, HEADS
from featcache.classify.runs import format_results, load_runs, pct
from featcache.classify.select import DEFAULT_DATASET
from featcache.classify.transforms import DEFAULT_TRANSFORM, TRANSFORMS
from featcache.classify.tsne import TsneConfig, make_tsne
from featcache.errors import run_command
from featcache.extract.compute.distributed import ENGINES
from featcache.paths import default_data_dir

CACHE_OPTIONS = ("backbone", "resolution", "crops", "pool", "dtype")
HYPERPARAMETERS = tuple(sorted({name for spec in HEADS.values() for name in spec.options}))


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, got {text!r}"
        )
    return sizes


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path,
                        default=default_data_dir(),
                        help="data folder holding cache/ and runs/ (env FEATCACHE_DATA_DIR; "
                        "default: %(default)s)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--dataset", help="what `extract run --dataset` was given: a registered "
                        "name, a folder or CSV path, the folder's base name or the --name given "
                        f"(default: {DEFAULT_DATASET}); exactly one cache must match")
    source.add_argument("--cache", type=Path, help="explicit cache file (.h5)")
    parser.add_argument("--layer", dest="layers", type=_names, default=DEFAULT_LAYERS,
                        help="layer name, or several joined by commas to concatenate "
                        f"(default: {','.join(DEFAULT_LAYERS)})")
    narrow = parser.add_argument_group(
        "cache options (where several caches of the dataset exist, pick one as extracted)")
    narrow.add_argument("--backbone")
    narrow.add_argument("--res", dest="resolution", type=int)
    narrow.add_argument("--crops")
    narrow.add_argument("--pool")
    narrow.add_argument("--dtype")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m featcache.classify",
                     description="Train and compare classifier heads on cached CNN features.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fit = commands.add_parser("fit", help="choose, refit and test one head; write a run folder",
                              description="Choose hyperparameters on a stratified validation "
                              "split of the training rows, refit on all of them, test once.")
    _source_options(fit)
    heads = ", ".join(f"{name}: {spec.summary}" for name, spec in HEADS.items())
    fit.add_argument("--model", choices=list(HEADS), default=DEFAULT_HEAD,
                     help=f"head (default: %(default)s). {heads}")
    fit.add_argument("--transform", choices=list(TRANSFORMS), default=DEFAULT_TRANSFORM,
                     help="feature transform fitted on training rows (default: %(default)s)")
    fit.add_argument("--dim", type=int, help="output dimension of --transform pca (default 256)")
    fixed = fit.add_argument_group("hyperparameters (a given value is fixed and not swept)")
    fixed.add_argument("--C", type=float, help="svm, logreg: inverse L2 strength")
    fixed.add_argument("--hidden", type=_int_list, help="mlp*: hidden sizes, e.g. 4096,4096")
    fixed.add_argument("--dropout", type=float, help="mlp*: dropout probability")
    fixed.add_argument("--weight-decay", type=float, help="mlp*: Adam L2 weight decay")
    fixed.add_argument("--epochs", type=int, help="mlp*: training epochs")
    fixed.add_argument("--neighbors", dest="n_neighbors", type=int, help="knn: k")
    data = fit.add_argument_group("protocol")
    data.add_argument("--train-size", type=int, help="stratified subset of N training samples")
    data.add_argument("--shots", type=int, help="K training samples per class")
    data.add_argument("--repeats", type=int, help="repeat with seeds SEED, SEED+1, ... and "
                      "report mean and spread (default: 5 with --shots, else 1)")
    data.add_argument("--resplit", type=float, metavar="TEST_FRACTION",
                      help="re-split train+test stratified with each repeat's seed "
                      "(only for caches without an official split)")
    data.add_argument("--val-size", type=float, default=0.1,
                      help="validation fraction of the training rows (default: %(default)s)")
    data.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    data.add_argument("--jobs", type=int, default=2, help="parallel sweep workers")
    data.add_argument("--engine", choices=ENGINES, default="local",
                      help="where the sweep's units and the repeats run: threads here, or Ray "
                      "tasks (RAY_ADDRESS, else a local Ray with --jobs CPUs; default: "
                      "%(default)s)")
    fit.add_argument("--tag", help="label stored with the run, to group runs (a recipe's name)")
    fit.add_argument("--skip-existing", action="store_true",
                     help="re-use a finished run of the same configuration (same cache "
                     "fingerprint and result-changing options) instead of fitting again")

    results = commands.add_parser("results", help="every run so far, one table per dataset, "
                                  "best validation score first")
    results.add_argument("--data-dir", type=Path,
                         default=default_data_dir())
    results.add_argument("--dataset", help="only this dataset (its name or its path)")
    results.add_argument("--tag", help="only runs with this tag")

    tsne = commands.add_parser("tsne", help="2-D t-SNE map of test features (PNG)")
    _source_options(tsne)
    tsne.add_argument("--points", type=int, default=2000,
                      help="stratified sample of test points (default: %(default)s)")
    tsne.add_argument("--seed", type=int, default=0)
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
