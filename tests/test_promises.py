"""Issue 27: what the tool promises, it does; each case driven as the user drove it."""

from __future__ import annotations

import json
from pathlib import Path

from featcache.classify import cli as classify_cli
from featcache.extract import cli as extract_cli

FAST = ["--backbone", "efficientnet_lite0", "--res", "64", "--batch-size", "8"]


def _extract(folder: Path, data_dir: Path, capsys, *extra: str) -> tuple[int, str, str]:
    code = extract_cli.main(["run", "--dataset", str(folder), "--data-dir", str(data_dir),
                             *FAST, *extra])
    out, err = capsys.readouterr()
    return code, out.strip(), err


def test_a_given_val_split_chooses_and_is_refitted_on(image_folder, tmp_path, capsys) -> None:
    """Case 1: train/ val/ test/ folders: selection on val, refit on train + val."""
    folder = image_folder(splits=["train", "val", "test"], per_class=6)
    code, cache, _ = _extract(folder, tmp_path, capsys)
    assert code == 0
    code = classify_cli.main(["fit", "--cache", cache, "--data-dir", str(tmp_path),
                              "--model", "logreg"])
    out, _ = capsys.readouterr()
    assert code == 0
    metrics = json.loads((Path(out.split("run: ")[1].strip()) / "metrics.json").read_text())
    assert metrics["selection"] == "given val"
    assert metrics["n_val"] == 18 and metrics["n_train"] == 36 and metrics["n_test"] == 18
