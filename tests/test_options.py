"""The option table (featcache/options.py) against what is built from it or must agree with it:
the parsers, the configs, the stored rebuild command, the Makefile and the docs' tables."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest

from featcache import options
from featcache.classify import cli as classify_cli
from featcache.classify.experiment import FitConfig
from featcache.classify.features import DEFAULT_LAYERS
from featcache.classify.heads.registry import DEFAULT_HEAD
from featcache.classify.select import CacheFields, CacheQuery
from featcache.classify.transforms import DEFAULT_TRANSFORM
from featcache.classify.tsne import TsneConfig
from featcache.errors import UsageError
from featcache.extract import cli as extract_cli
from featcache.extract.cache.hdf5 import FeatureCache
from featcache.extract.compute.runtimes import RUNTIMES
from featcache.extract.config import ExtractConfig
from featcache.extract.data.preprocess import VIEW_NAMES

ROOT = Path(__file__).resolve().parents[1]
MAKE_TARGETS = {options.EXTRACT: "extract", options.FIT: "classify", options.TSNE: "tsne",
                options.QUERY: "classify"}


def test_choice_lists_match_their_implementations():
    assert tuple(RUNTIMES) == options.RUNTIMES
    assert tuple(VIEW_NAMES) == options.VIEW_COUNTS


def test_each_option_is_defined_once_per_command():
    for command in MAKE_TARGETS:
        names = [o.name for o in options.options_for(command)]
        assert len(names) == len(set(names)), command
        flags = [o.flag for o in options.options_for(command)]
        assert len(flags) == len(set(flags)), command


def test_extract_config_takes_defaults_from_the_table():
    cfg = ExtractConfig()
    for o in options.options_for(options.EXTRACT):
        if o.name != "data_dir":
            assert getattr(cfg, o.name) == o.default, o.name


def _parsed(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    return parser.parse_args(argv)


def test_extract_parser_defaults_are_the_tables():
    args = _parsed(extract_cli.build_parser(), ["run"])
    for o in options.options_for(options.EXTRACT):
        if o.name != "data_dir":
            assert getattr(args, o.name) == o.default, o.name


@pytest.mark.parametrize("o", [o for o in options.options_for(options.EXTRACT) if o.choices],
                         ids=lambda o: o.name)
def test_a_bad_choice_names_the_value_and_the_choices(o):
    with pytest.raises(UsageError, match=f"unknown {o.label} 'nope'; valid: "
                       f"{', '.join(o.choices)}"):
        ExtractConfig(**{o.name: "nope"})


@pytest.mark.parametrize("o", [o for o in options.options_for(options.EXTRACT)
                               if o.low is not None], ids=lambda o: o.name)
def test_a_value_out_of_bounds_is_refused(o):
    with pytest.raises(UsageError, match=f"{o.label} "):
        ExtractConfig(**{o.name: o.type(o.low) - (0 if o.type is float else 1)})


def test_crops_parse_without_a_config():
    assert options.views_per_split("test:10", ("train", "test")) == {"train": 1, "test": 10}
    with pytest.raises(UsageError, match="crops '3' is not valid; valid: 1, 5, 10"):
        options.views_per_split("3", ("train",))


def test_stored_rebuild_command_is_a_cache_hit(image_folder, tmp_path, capsys):
    folder = image_folder(per_class=5)
    argv = ["run", "--dataset", str(folder), "--data-dir", str(tmp_path / "data"), "--res", "32",
            "--seed", "3", "--test-fraction", "0.4", "--batch-size", "4", "--quiet"]
    assert extract_cli.main(argv) == 0
    path = capsys.readouterr().out.strip()
    with FeatureCache(Path(path)) as cache:
        rebuild = cache.meta["rebuild"]
    words = shlex.split(rebuild)
    assert words[:4] == ["python", "-m", "featcache.extract", "run"]
    for o in options.options_for(options.EXTRACT):
        if o.keyed and o.type is not bool and o.name not in ("name", "limit"):
            assert o.flag in words, o.flag
    assert extract_cli.main([*words[3:], "--quiet"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == path
    assert "cache hit" in out.err


def _make(target: str, *assignments: str) -> list[str]:
    """The words of ``make -n target`` 's featcache command line."""
    out = subprocess.run(["make", "-n", "--no-print-directory", target, *assignments],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    (line,) = [ln for ln in out.stdout.splitlines() if " -m featcache." in ln]
    return shlex.split(line)


def _sample(o: options.Option) -> tuple[str, str | None]:
    """A value to give ``o``'s Make variable, and the argument it must reach (None: a switch)."""
    if o.type is bool:
        return "1", None
    if o.choices:
        return o.choices[-1], o.choices[-1]
    samples = {int: "17", float: "0.3", Path: "/tmp/a dir", tuple: "pool,block5"}
    value = samples.get(o.type, "some value")
    return value, value


@pytest.mark.parametrize(
    ("command", "o"),
    [(c, o) for c in MAKE_TARGETS for o in options.options_for(c) if o.make],
    ids=lambda x: x if isinstance(x, str) else x.make,
)
def test_every_make_variable_reaches_its_flag(command, o):
    given, expected = _sample(o)
    words = _make(MAKE_TARGETS[command], f"{o.make}={given}")
    assert o.flag in words, (o.make, words)
    if expected is not None:
        assert words[words.index(o.flag) + 1] == expected


def _table(path: Path, header: str) -> dict[str, list[str]]:
    """Rows of the markdown table whose header names ``header``: Make variable -> its cells."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|") and header in ln)
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        for make, flag in zip(re.findall(r"`(\w+)`", cells[0]), re.findall(r"`(--[\w-]+)`",
                                                                           cells[1]),
                              strict=True):
            rows[make] = [flag, cells[2]]
    return rows


DOC_TABLES = [
    (ROOT / "README.md", "`python -m featcache.extract run`", (options.EXTRACT,)),
    (ROOT / "docs" / "classify.md", "`python -m featcache.classify fit`",
     (options.FIT, options.QUERY)),
]


@pytest.mark.parametrize(("path", "header", "commands"), DOC_TABLES, ids=["README", "classify"])
def test_docs_tables_agree_with_the_option_table(path, header, commands):
    rows = _table(path, header)
    table = {o.make: o for c in commands for o in options.options_for(c) if o.make}
    assert set(rows) == set(table)
    for make, (flag, meaning) in rows.items():
        o = table[make]
        assert flag == o.flag, make
        for choice in o.choices:
            assert f"`{choice}`" in meaning, (make, choice)
        shown = re.search(r"\(`([^`]+)`\)$", meaning)
        if shown and o.default is not None:
            default = ",".join(o.default) if o.type is tuple else str(o.default)
            assert shown.group(1) == default, make


def test_stage_two_defaults_are_the_tables():
    table = tuple(options.option(options.FIT, n).default for n in ("model", "transform", "layers"))
    assert table == (DEFAULT_HEAD, DEFAULT_TRANSFORM, DEFAULT_LAYERS)
    parser = classify_cli.build_parser()
    for command, name in ((options.FIT, "fit"), (options.TSNE, "tsne")):
        args = parser.parse_args([name])
        for o in options.options_for(command):
            if o.name != "data_dir":
                assert getattr(args, o.name) == o.default, (name, o.name)
    config = FitConfig(data_dir=Path("."))
    for o in options.options_for(options.FIT):
        if hasattr(config, o.name) and o.name != "data_dir":
            assert getattr(config, o.name) == o.default, o.name


@pytest.mark.parametrize(
    "o", [o for o in options.options_for(options.FIT) if o.low is not None or o.choices],
    ids=lambda o: o.name)
def test_fit_config_refuses_what_the_table_refuses(o):
    bad = "nope" if o.choices else o.type(o.low) - (0 if o.type is float else 1)
    with pytest.raises(UsageError, match=re.escape(f"{o.make}={bad}") if not o.choices
                       else f"unknown {o.label} 'nope'"):
        FitConfig(data_dir=Path("."), **{o.name: bad})


def test_every_head_hyperparameter_has_a_flag():
    names = {o.name for o in options.options_for(options.FIT)}
    assert set(classify_cli.HYPERPARAMETERS) <= names


def test_narrowing_fields_are_written_once():
    names = {o.name for o in options.options_for(options.QUERY)}
    for config in (CacheQuery, FitConfig, TsneConfig):
        assert issubclass(config, CacheFields)
    assert {f.name for f in fields(CacheFields)} == names
