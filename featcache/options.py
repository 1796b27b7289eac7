"""Every option of both stages, defined once: the CLIs, the configs, the Makefile, the docs and
the rebuild command stored in each cache are built from this table or checked against it.

Choice lists live here, not in the modules that implement them; the implementations import
them. This module imports nothing heavier than the standard library and ``featcache.errors``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featcache.errors import UsageError
from featcache.paths import default_data_dir

POOLS = ("avg", "max", "none")
DTYPES = ("float16", "float32")
DEVICES = ("auto", "cpu", "cuda")
ENGINES = ("local", "ray")
RUNTIMES = ("eager", "openvino")  # extract.compute.runtimes implements each (a test checks)
FINGERPRINTS = ("stat", "content")
VIEW_COUNTS = (1, 5, 10)  # extract.data.preprocess names each view (a test checks)
SPLITS = ("train", "val", "test")
SHARD_ROWS = 1024
FLATTEN_LIMIT = 100_000
MAX_SEED = 2**32 - 1

EXTRACT = "extract run"
FIT = "classify fit"
TSNE = "classify tsne"
QUERY = "cache query"  # the options that narrow stage two's DATASET= to one cache


@dataclass(frozen=True)
class Option:
    """One option: its config field, flag, Make variable, type, default, help and bounds.

    ``type`` is str, int, float, Path, bool (a switch), tuple (comma-separated names) or
    "positive_ints" (comma-separated sizes).
    ``keyed``: the value changes what the cache holds, so the stored rebuild command gives it.
    A float's bounds are exclusive, an int's inclusive.
    """

    name: str
    flag: str
    make: str | None
    type: type | str
    default: Any
    help: str
    commands: tuple[str, ...]
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    keyed: bool = False

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")


_E, _F, _T, _Q = (EXTRACT,), (FIT,), (TSNE,), (QUERY,)
_CLASSIFY = (FIT, TSNE)

OPTIONS: tuple[Option, ...] = (
    # stage one, `extract run`
    Option("dataset", "--dataset", "DATASET", str, "digits",
           "registered name, a folder of class folders (train/, val/, test/ subfolders are "
           "taken as splits), or a CSV manifest path,label[,split]", _E, keyed=True),
    Option("name", "--name", "NAME", str, None,
           "readable dataset name for the cache and stage two [the registry name or the "
           "folder's base name]", _E, keyed=True),
    Option("backbone", "--backbone", "BACKBONE", str, "efficientnet_lite0",
           "registered backbone (see `list`), any torchvision model name, or timm/<model>",
           _E, keyed=True),
    Option("layers", "--layers", "LAYERS", tuple, ("pool",),
           "comma-separated layer aliases or raw fx node names (see `layers`)", _E, keyed=True),
    Option("pool", "--pool", "POOL", str, "avg", "reduce spatial taps", _E, POOLS, keyed=True),
    Option("resolution", "--res", "RES", int, None,
           "input resolution in pixels [the backbone's input size]", _E, low=16, high=2048,
           keyed=True),
    Option("crops", "--crops", "CROPS", str, "1",
           "views per image: 1 (full image), 5 (4 corners + centre) or 10 (those mirrored "
           "too); 'test:10' for the test split only", _E, keyed=True),
    Option("dtype", "--dtype", "DTYPE", str, "float16", "stored feature type", _E, DTYPES,
           keyed=True),
    Option("batch_size", "--batch-size", "BATCH", int, None,
           "views per forward pass [the fastest on this machine: a probe of a few seconds, its "
           "choice kept in <data dir>/probe.json]", _E, low=1, high=4096),
    Option("runtime", "--runtime", "RUNTIME", str, "auto",
           "forward-pass runtime [auto: openvino on a CPU where it is installed (the "
           "'featcache[openvino]' extra), else eager PyTorch]", _E, ("auto", *RUNTIMES)),
    Option("engine", "--engine", "ENGINE", str, "local",
           "one process, or Ray workers (the 'featcache[ray]' extra; RAY_ADDRESS=auto joins a "
           "running cluster)", _E, ENGINES),
    Option("shard_rows", "--shard-rows", "SHARD_ROWS", int, SHARD_ROWS,
           "images per shard, the unit of resume and of Ray's work; fixed when a cache is "
           "started (a resumed run keeps the first run's)", _E, low=1),
    Option("workers", "--workers", "WORKERS", int, None,
           "Ray workers (--engine ray) [one per GPU, else one]", _E, low=1),
    Option("device", "--device", "DEVICE", str, "auto", "where the forward pass runs", _E,
           DEVICES),
    Option("data_dir", "--data-dir", "DATA_DIR", Path, None,
           "where caches and downloads go, and where existing dataset copies are looked for "
           "(env FEATCACHE_DATA_DIR)", (EXTRACT, FIT, TSNE), keyed=True),
    Option("fingerprint", "--fingerprint", "FINGERPRINT", str, "stat",
           "how a folder's images are identified (path, size and mtime; or every byte, for "
           "file systems whose mtimes lie)", _E, FINGERPRINTS, keyed=True),
    Option("skip_bad", "--skip-bad", "SKIP_BAD", bool, False,
           "skip unreadable images and record them in the cache", _E, keyed=True),
    Option("force", "--force", "FORCE", bool, False,
           "allow --pool none on taps above the flatten size limit", _E, keyed=True),
    Option("test_fraction", "--test-fraction", "TEST_FRACTION", float, 0.2,
           "test share when a folder has no train/test split", _E, low=0.0, high=1.0,
           keyed=True),
    Option("seed", "--seed", "SEED", int, 0,
           "seed of the stratified split and of --limit subsets", _E, low=0, high=MAX_SEED,
           keyed=True),
    Option("limit", "--limit", "LIMIT", int, None,
           "stratified subset of at most N images per split (tests, benchmarks)", _E, low=1,
           keyed=True),
    # stage two: which cache (the five narrowing fields are shared by fit, tsne and the query)
    Option("backbone", "--backbone", "BACKBONE", str, None, "narrow to this backbone", _Q),
    Option("resolution", "--res", "RES", int, None, "narrow to this resolution", _Q),
    Option("crops", "--crops", "CROPS", str, None, "narrow to these views", _Q),
    Option("pool", "--pool", "POOL", str, None, "narrow to this pooling", _Q),
    Option("dtype", "--dtype", "DTYPE", str, None, "narrow to this storage type", _Q),
    # stage two, `classify fit` and `classify tsne`
    Option("dataset", "--dataset", "DATASET", str, None,
           "what `extract run --dataset` was given: a registered name, a folder or CSV path, "
           "the folder's base name or the --name given (default: digits); exactly one cache "
           "must match", _CLASSIFY),
    Option("cache", "--cache", "CACHE", Path, None, "explicit cache file (.h5)", _CLASSIFY),
    Option("layers", "--layer", "LAYER", tuple, ("pool",),
           "layer name, or several joined by commas to concatenate", _CLASSIFY),
    Option("model", "--model", "MODEL", str, "svm", "head", _F),
    Option("transform", "--transform", "TRANSFORM", str, "standardize",
           "feature transform fitted on training rows", _F),
    Option("C", "--C", "C", float, None, "svm, logreg: inverse L2 strength", _F),
    Option("hidden", "--hidden", "HIDDEN", "positive_ints", None,
           "mlp*: hidden sizes, e.g. 4096,4096", _F),
    Option("dropout", "--dropout", "DROPOUT", float, None, "mlp*: dropout probability", _F),
    Option("weight_decay", "--weight-decay", "WEIGHT_DECAY", float, None,
           "mlp*: Adam L2 weight decay", _F),
    Option("epochs", "--epochs", "EPOCHS", int, None, "mlp*: training epochs", _F),
    Option("n_neighbors", "--neighbors", "NEIGHBORS", int, None, "knn: k", _F),
    Option("train_size", "--train-size", "TRAIN_SIZE", int, None,
           "stratified subset of N training samples", _F, low=1),
    Option("shots", "--shots", "SHOTS", int, None, "K training samples per class", _F, low=1),
    Option("repeats", "--repeats", "REPEATS", int, None,
           "repeat with seeds SEED, SEED+1, ... and report mean and spread (default: 5 with "
           "--shots, else 1)", _F, low=1),
    Option("resplit", "--resplit", "RESPLIT", float, None,
           "re-split train+test stratified with each repeat's seed (only for caches without "
           "an official split)", _F, low=0.0, high=1.0),
    Option("val_size", "--val-size", "VAL_SIZE", float, 0.1,
           "validation fraction of the training rows", _F, low=0.0, high=1.0),
    Option("seed", "--seed", "SEED", int, 0, "seed of every random choice", _CLASSIFY, low=0,
           high=MAX_SEED),
    Option("jobs", "--jobs", "JOBS", int, 2, "parallel sweep workers", _F, low=1),
    Option("engine", "--engine", "ENGINE", str, "local",
           "where the sweep's units and the repeats run: threads here, or Ray tasks "
           "(RAY_ADDRESS, else a local Ray with --jobs CPUs)", _F, ENGINES),
    Option("dim", "--dim", "DIM", int, None, "output dimension of --transform pca (default 256)",
           _F, low=1),
    Option("points", "--points", "POINTS", int, 2000, "stratified sample of test points", _T,
           low=10),
    Option("tag", "--tag", None, str, None,
           "label stored with the run, to group runs (a recipe's name)", _F),
    Option("skip_existing", "--skip-existing", "SKIP_EXISTING", bool, False,
           "re-use a finished run of the same configuration (same cache fingerprint and "
           "result-changing options) instead of fitting again", _F),
)


def options_for(command: str) -> tuple[Option, ...]:
    """The options of one command, in table order."""
    return tuple(o for o in OPTIONS if command in o.commands)


def option(command: str, name: str) -> Option:
    """The option ``name`` of ``command``."""
    for o in options_for(command):
        if o.name == name:
            return o
    raise KeyError(f"{command} has no option {name!r}")


def defaults(command: str) -> dict[str, Any]:
    return {o.name: o.default for o in options_for(command)}


def check(command: str, values: Mapping[str, Any], *, make_names: bool = False) -> None:
    """Raise ``UsageError`` naming the first value outside its option's choices or bounds.

    ``make_names``: the message names the value as its Make variable (``JOBS=0``).
    """
    for o in options_for(command):
        value = values.get(o.name)
        if value is None or o.type is bool:
            continue
        if o.choices and value not in o.choices:
            raise UsageError(f"unknown {o.label} {value!r}; valid: {', '.join(o.choices)}")
        said = f"{o.make}={value}" if make_names and o.make else f"{o.label} {value}"
        if o.type is float and (o.low is not None or o.high is not None) and not (
            (o.low is None or value > o.low) and (o.high is None or value < o.high)
        ):
            raise UsageError(f"{said} must be in ({o.low:g}, {o.high:g})")
        if o.type is int and (
            (o.low is not None and value < o.low) or (o.high is not None and value > o.high)
        ):
            bounds = f"between {o.low} and {o.high}" if o.high is not None else f">= {o.low}"
            raise UsageError(f"{said} is out of range; it must be {bounds}")


def views_per_split(crops: str, splits: Mapping[str, object] | tuple[str, ...]) -> dict[str, int]:
    """Parse CROPS: ``N`` for every split, or ``split:N[,split:N]`` (other splits get 1)."""
    text = crops.strip()
    if ":" not in text:
        return {s: _views(text) for s in splits}
    out = dict.fromkeys(splits, 1)
    for part in text.split(","):
        split, _, n = part.partition(":")
        if split not in out:
            raise UsageError(f"crops: unknown split {split!r}; valid: {', '.join(out)}")
        out[split] = _views(n)
    return out


def _views(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n not in VIEW_COUNTS:
        raise UsageError(
            f"crops {text!r} is not valid; valid: {', '.join(map(str, VIEW_COUNTS))} "
            "or split:N, e.g. test:10"
        )
    return n


def add_arguments(
    parser: Any,
    command: str,
    only: tuple[str, ...] | None = None,
    choices: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Add ``command``'s options (or ``only`` those) to an argparse parser or group.

    The table's choices are checked by the config, so the error lists them in one line;
    ``choices`` (a registry's names) are handed to argparse.
    """
    choices = choices or {}
    for o in options_for(command):
        if only is not None and o.name not in only:
            continue
        names = tuple(choices.get(o.name, o.choices))
        shown = f"{', '.join(names)}: " if names else ""
        default = default_data_dir() if o.name == "data_dir" else o.default
        if o.type is bool:
            parser.add_argument(o.flag, dest=o.name, action="store_true", help=shown + o.help)
            continue
        suffix = f" [{','.join(default) if o.type is tuple else '%(default)s'}]" if (
            default is not None and not o.help.endswith("]")) else ""
        extra = {"choices": list(names)} if o.name in choices else {}
        parser.add_argument(o.flag, dest=o.name, type=_PARSERS.get(o.type, o.type),
                            default=default, help=shown + o.help + suffix, **extra)


def comma_names(text: str) -> tuple[str, ...]:
    """``"a, b,"`` -> ``("a", "b")``."""
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _positive_ints(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, got {text!r}"
        )
    return sizes


_PARSERS: dict[Any, Any] = {tuple: comma_names, "positive_ints": _positive_ints}
