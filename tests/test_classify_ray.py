"""Stage two on Ray (local mode): a Ray sweep chooses what the local sweep chooses."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_classify_synthetic import write_synthetic

from classify.engines import RayEngine
from classify.experiment import FitConfig, run_experiment
from extract.distributed import ray_session

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'featcache[ray]')")
pytestmark = pytest.mark.slow

SAME = ("params", "grid", "val_scores", "selection", "n_val", "top1", "mean_per_class")


@pytest.fixture(scope="module")
def local_ray():
    with ray_session(2):
        yield


def _both(data_dir: Path, **options) -> tuple[dict, dict]:
    local = run_experiment(FitConfig(data_dir=data_dir, engine="local", **options))[1]
    on_ray = run_experiment(FitConfig(data_dir=data_dir, engine="ray", **options))[1]
    return local, on_ray


@pytest.mark.parametrize("options", [
    pytest.param({"model": "svm"}, id="svm-5-fold-tasks"),
    pytest.param({"model": "mlp", "params": {"hidden": (16,)}}, id="mlp-weight-decay-tasks"),
    pytest.param({"model": "logreg", "shots": 20, "repeats": 3}, id="logreg-repeat-tasks"),
])
def test_a_ray_sweep_chooses_what_the_local_sweep_chooses(tmp_path, local_ray, monkeypatch,
                                                         options) -> None:
    tasks = []
    ray_map = RayEngine.map_shared

    def counted(self, work, shared, units):
        shared = list(shared)
        tasks.append(len(shared) * len(units))
        return ray_map(self, work, shared, units)

    monkeypatch.setattr(RayEngine, "map_shared", counted)
    write_synthetic(tmp_path, n_train=300, classes=3, dim=16, spread=2.0)
    local, on_ray = _both(tmp_path, **options)
    assert sum(tasks) >= 3  # 5 folds, 5 folds x 3 weight decays, or 3 repeats
    for key in SAME:
        assert on_ray[key] == local[key], key
    assert [r["params"] for r in on_ray["per_repeat"]] == [r["params"]
                                                           for r in local["per_repeat"]]
    assert on_ray["config_hash"] == local["config_hash"]  # the engine does not change results
