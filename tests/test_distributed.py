"""Stage one on Ray (local mode): the same file as one process, a killed worker included."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from featcache.errors import UsageError
from featcache.extract.cache.hdf5 import FeatureCache
from featcache.extract.config import ExtractConfig
from featcache.extract.pipeline import run_extraction
from featcache.raysession import check_engine, ray_session

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'featcache[ray]')")
psutil = pytest.importorskip("psutil", reason="psutil is needed to find the Ray workers")

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    with ray_session(2):
        yield


def _single_process(cfg: ExtractConfig) -> Path:
    """The reference: one process with one torch thread, as each of the two Ray workers on
    these two cores has (oneDNN picks other kernels for other thread counts at small batch
    sizes: then values differ in the last float16 bit, 0.4 % of them at batch 4 here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_extraction(cfg, progress=False).path
    finally:
        torch.set_num_threads(before)


def _cfg(folder, data_dir, **kw):
    base = dict(dataset=str(folder), data_dir=data_dir, resolution=48, batch_size=4,
                shard_rows=4, test_fraction=0.5)
    return ExtractConfig(**{**base, **kw})


def _assert_same_file(a: Path, b: Path) -> None:
    assert a.name == b.name
    with FeatureCache(a) as ca, FeatureCache(b) as cb:
        assert ca.splits == cb.splits
        for split in cb.splits:
            np.testing.assert_array_equal(ca.ids(split), cb.ids(split))
            np.testing.assert_array_equal(ca.labels(split), cb.labels(split))
            np.testing.assert_array_equal(ca.features(split, "pool"), cb.features(split, "pool"))


def test_two_ray_workers_write_the_single_process_file(image_folder, tmp_path, local_ray):
    folder = image_folder(per_class=6)
    local = _single_process(_cfg(folder, tmp_path / "local"))
    on_ray = run_extraction(_cfg(folder, tmp_path / "ray", engine="ray", workers=2),
                            progress=False)
    assert on_ray.engine == "ray" and on_ray.shards == 6
    _assert_same_file(on_ray.path, local)


def _actor_pids() -> list[int]:
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if any("_ShardActor" in part for part in (p.info["cmdline"] or []))]


def test_a_worker_killed_mid_run_costs_only_its_shard(image_folder, tmp_path, local_ray, caplog):
    folder = image_folder(per_class=16)
    reference = _single_process(_cfg(folder, tmp_path / "local"))
    data_dir = tmp_path / "ray"
    outcome = {}

    def extract() -> None:
        try:
            outcome["result"] = run_extraction(_cfg(folder, data_dir, engine="ray", workers=2),
                                               progress=False)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=extract)
    thread.start()
    deadline = time.time() + 120
    while time.time() < deadline and not list(data_dir.glob("cache/*/*.parts/*/*.npz")):
        time.sleep(0.02)
    pids = _actor_pids()
    assert pids, "no Ray worker found to kill"
    os.kill(pids[0], signal.SIGKILL)
    thread.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    assert "a worker died on shard" in caplog.text
    _assert_same_file(outcome["result"].path, reference)


def test_the_driver_killed_leaves_a_cache_the_same_command_resumes(image_folder, tmp_path):
    folder = image_folder(per_class=16)
    args = [sys.executable, "-m", "featcache.extract", "run", "--dataset", str(folder),
            "--res", "48",
            "--batch-size", "4", "--shard-rows", "4", "--test-fraction", "0.5", "--engine",
            "ray", "--workers", "2", "--quiet", "--data-dir", str(tmp_path / "ray")]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    driver = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "ray").glob("cache/*/*.parts/*/*.npz")):
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert not list((tmp_path / "ray").glob("cache/*/*.h5"))
    again = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    _assert_same_file(Path(again.stdout.strip()), _single_process(_cfg(folder, tmp_path / "l")))


def test_engine_names_are_checked():
    with pytest.raises(UsageError, match="unknown engine 'spark'; valid: local, ray"):
        check_engine("spark")
