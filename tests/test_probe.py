"""The batch-size probe: its choice, its cache, and that the batch never changes features."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import featcache.extract.compute.probe as probe
import featcache.extract.pipeline as pipeline
from featcache.extract.cache.hdf5 import FeatureCache
from featcache.extract.config import ExtractConfig

# pure-forward img/s of the default backbone at 224 px on the 2-core machine (issue 14)
RATES_224 = {1: 77.0, 2: 90.0, 4: 103.0, 8: 112.0, 16: 76.0, 32: 66.0, 64: 60.0}


def _table_rates(table, calls, oom_from=None):
    def fake(forward, batch, res, device, streams):
        calls.append(batch)
        if oom_from is not None and batch >= oom_from:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return table[batch]

    return fake


def test_probe_picks_the_fastest_and_stops_after_two_declines(monkeypatch):
    calls = []
    monkeypatch.setattr(probe, "_rate", _table_rates(RATES_224, calls))
    found = probe.run_probe(None, resolution=224, device=torch.device("cpu"))
    assert found.batch_size == 8
    assert calls == [1, 2, 4, 8, 16, 32]  # 16 and 32 below 90 % of the best: 64 is not tried


def test_probe_prefers_the_larger_of_two_batches_within_three_percent(monkeypatch):
    rates = {1: 10.0, 2: 50.0, 4: 95.0, 8: 100.0, 16: 98.0, 32: 20.0, 64: 10.0}
    monkeypatch.setattr(probe, "_rate", _table_rates(rates, []))
    assert probe.run_probe(None, resolution=64, device=torch.device("cpu")).batch_size == 16


def test_gpu_probe_climbs_until_memory_runs_out(monkeypatch):
    rates = {b: float(b) for b in (1, 2, 4, 8, 16, 32, 64, 128, 256)}
    calls = []
    monkeypatch.setattr(probe, "_rate", _table_rates(rates, calls, oom_from=256))
    found = probe.run_probe(None, resolution=224, device=torch.device("cuda"))
    assert found.batch_size == 128
    assert calls[-1] == 256 and 256 not in found.rates


@pytest.fixture
def quiet(monkeypatch):
    """A machine whose cores no other process holds (the real load is not the test's)."""
    monkeypatch.setattr(probe, "_others_cores", lambda before: 0.0)


def test_choice_is_cached_per_configuration(tmp_path, quiet):
    cache_file = tmp_path / "probe.json"
    passes = []

    def forward(x):
        passes.append(x.shape)
        return x.float().mean()

    config = {"backbone": "toy", "resolution": 8}
    first = probe.choose_batch_size(
        forward, resolution=8, device=torch.device("cpu"), config=config, cache_file=cache_file
    )
    assert not first.cached and passes and all(s[1:] == (3, 8, 8) for s in passes)
    assert first.batch_size in first.rates
    stored = json.loads(cache_file.read_text())
    assert [v["batch_size"] for v in stored.values()] == [first.batch_size]
    passes.clear()
    again = probe.choose_batch_size(
        forward, resolution=8, device=torch.device("cpu"), config=config, cache_file=cache_file
    )
    assert again.cached and again.batch_size == first.batch_size and not passes
    other = probe.choose_batch_size(
        forward,
        resolution=8,
        device=torch.device("cpu"),
        config={**config, "resolution": 16},
        cache_file=cache_file,
    )
    assert not other.cached and passes
    assert len(json.loads(cache_file.read_text())) == 2


def _tiny_probe(cache_file):
    return probe.choose_batch_size(lambda x: x.sum(), resolution=4, device=torch.device("cpu"),
                                   config={}, cache_file=cache_file)


def test_probe_on_a_busy_machine_is_used_but_not_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(probe, "_others_cores", lambda before: 1.5)
    cache_file = tmp_path / "probe.json"
    found = _tiny_probe(cache_file)
    assert found.batch_size in found.rates and not cache_file.exists()
    assert "not cached" in found.describe()


def test_unreadable_probe_cache_is_probed_again(tmp_path, quiet):
    cache_file = tmp_path / "probe.json"
    cache_file.write_text("{not json")
    found = _tiny_probe(cache_file)
    assert not found.cached and json.loads(cache_file.read_text())


@pytest.mark.slow
def test_probed_batch_gives_the_features_of_any_other_batch(image_folder, tmp_path, quiet):
    """Pretrained Lite0: features with the probed batch equal those of batch 1 and 8.

    On the 2-core development machine (oneDNN, torch 2.14) batches 2-64 gave bit-equal
    float32 features and batch 1 differed by at most 3e-5, so stored float16 values may
    differ by one rounding step; the tolerance is float16's.
    """
    folder = image_folder(per_class=4)
    feats, batches = [], []
    for batch in (None, 1, 8):
        cfg = ExtractConfig(
            dataset=str(folder),
            data_dir=tmp_path / str(batch),
            resolution=64,
            batch_size=batch,
            layers=("pool", "block5"),
        )
        res = pipeline.run_extraction(cfg, progress=False)
        batches.append(res.worker.split(", ", 1)[1])
        with FeatureCache(res.path) as cache:
            feats.append({k: cache.features("test", k) for k in ("pool", "block5")})
    assert batches[0].startswith("batch ") and "probed" in batches[0]
    assert batches[1:] == ["batch 1 (given)", "batch 8 (given)"]
    assert (tmp_path / "None" / "probe.json").is_file()
    for other in feats[1:]:
        for k in ("pool", "block5"):
            np.testing.assert_allclose(other[k], feats[0][k], rtol=1e-3, atol=1e-3)


def test_busy_measure_counts_other_processes_not_this_one():
    """This process spinning for a second is not 'busy'; a child process spinning is."""
    before = probe._cpu_seconds()
    if before is None:
        pytest.skip("no /proc/stat on this system: the probe cannot tell who held the cores")
    end = time.perf_counter() + 1.0
    while time.perf_counter() < end:
        pass
    own = probe._others_cores(before)
    before = probe._cpu_seconds()
    spin = "import time\nt = time.perf_counter()\nwhile time.perf_counter() - t < 1: pass"
    subprocess.run([sys.executable, "-c", spin], check=True)
    child = probe._others_cores(before)
    assert child > own + 0.5, (own, child)


def test_a_pass_runs_one_batch_per_stream_at_once():
    """With two streams the probe's pass is two calls in flight together, counted as such."""
    import threading

    inside, most, lock = [0], [0], threading.Lock()

    def forward(x):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        threading.Event().wait(0.01)
        with lock:
            inside[0] -= 1

    rate = probe._rate(forward, 4, 16, torch.device("cpu"), 2)
    assert most[0] == 2
    assert 2 * 4 / 0.05 < rate < 2 * 4 / 0.01  # two batches of 4 in about 10 ms
