"""The package as a user installs it: a wheel in a fresh virtual environment, run from
outside the checkout, with one import name (``featcache``) and its console scripts."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def build_wheel(out: Path) -> Path:
    """The wheel, built from a copy of the sources (a build in the checkout would leave a
    ``build/`` folder whose stale modules a later build could pack)."""
    source = out / "source"
    for name in ("pyproject.toml", "README.md"):
        source.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for folder in ("featcache", "extract", "classify"):
        shutil.copytree(ROOT / folder, source / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(out / "dist"), str(source)],
                   check=True, cwd=out)
    (wheel,) = (out / "dist").glob("featcache-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the built wheel; the heavy dependencies (torch & co.) come
    from this venv's site-packages as plain paths, so this checkout's editable install is
    not seen."""
    base = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(base)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True, text=True)
    (Path(site.stdout.strip()) / "dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)],
                   check=True, cwd=base)
    return venv


@pytest.mark.slow
def test_the_wheel_holds_one_top_level_package(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"featcache"}
    sources = {p.relative_to(ROOT).as_posix() for folder in ("extract", "classify", "featcache")
               for p in (ROOT / folder).rglob("*.py")}
    packaged = {n.removeprefix("featcache/") for n in names if n.endswith(".py")}
    expected = {s.removeprefix("featcache/") for s in sources}
    missing = expected - packaged
    assert not missing, f"modules left out of the wheel (pyproject.toml packages): {missing}"


@pytest.mark.slow
def test_installed_wheel_runs_from_outside_the_checkout(wheel_venv: Path, tmp_path: Path) -> None:
    bin_dir = wheel_venv / "bin"
    done = subprocess.run([bin_dir / "featcache-extract", "--help"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 0 and "run" in done.stdout, done.stderr
    done = subprocess.run([bin_dir / "featcache-classify", "--help"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 0 and "fit" in done.stdout, done.stderr
    script = textwrap.dedent("""
        from pathlib import Path

        import featcache
        from featcache import LinearSVM, extract, load_features
        assert "site-packages" in featcache.__file__, featcache.__file__
        cache = extract("digits", resolution=32, limit=60, data_dir=Path("data"))
        X, y, _ = load_features(cache, "train")
        X_test, y_test, _ = load_features(cache, "test")
        print(round(LinearSVM(C=0.1).fit(X, y).score(X_test, y_test), 3))
    """)
    done = subprocess.run([bin_dir / "python", "-c", script], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert 0.0 <= float(done.stdout.strip().splitlines()[-1]) <= 1.0
    assert (tmp_path / "data" / "cache").is_dir()
