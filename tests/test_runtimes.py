"""Forward-pass runtimes: the registry's errors, and OpenVINO's features against eager PyTorch."""

import importlib
import importlib.util
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import featcache.extract.pipeline as pipeline
from featcache.errors import EnvironmentFault, UsageError
from featcache.extract.backbones.registry import (
    load_backbone,
    make_feature_extractor,
    resolve_layers,
)
from featcache.extract.cache.hdf5 import FeatureCache
from featcache.extract.cache.shards import ShardStore, shard_specs
from featcache.extract.compute.runtimes import RUNTIMES, compile_forward, resolve_runtime
from featcache.extract.compute.worker import ShardWorker
from featcache.extract.config import ExtractConfig
from featcache.extract.plan import plan_extraction

CPU = torch.device("cpu")


def _within_float16(got, want):
    """Equal up to float16 rounding at the layer's scale (the cache stores float16)."""
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=2**-10, atol=2**-11 * scale)


def _taps(pretrained=True):
    model, spec = load_backbone("efficientnet_lite0", pretrained=pretrained)
    return make_feature_extractor(model, spec, resolve_layers(spec, ["pool", "block5"]))


def _need_openvino() -> None:
    problem = RUNTIMES["openvino"].problem()
    if problem:
        pytest.skip(f"OpenVINO cannot run here: {problem}")


def test_unknown_runtime_and_wrong_device_name_the_choices():
    with pytest.raises(UsageError, match="unknown runtime 'tensorrt'; valid: eager, openvino"):
        compile_forward("tensorrt", torch.nn.Identity(), torch.zeros(1), CPU)
    with pytest.raises(UsageError, match="runs on cpu, not cuda; valid for it: eager"):
        compile_forward("openvino", torch.nn.Identity(), torch.zeros(1), torch.device("cuda"))
    with pytest.raises(UsageError, match="unknown runtime 'fast'; valid: auto, eager, openvino"):
        ExtractConfig(runtime="fast")


def test_missing_package_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert resolve_runtime("auto", CPU) == "eager"
    with pytest.raises(EnvironmentFault, match=r"pip install 'featcache\[openvino\]'"):
        compile_forward("openvino", _taps(pretrained=False), torch.zeros(1, 3, 32, 32), CPU)


def test_a_broken_export_package_falls_back_to_eager_and_says_so(monkeypatch, caplog):
    """An ONNX built for another numpy raises AttributeError on import, not ImportError."""
    if not all(importlib.util.find_spec(m) for m in ("openvino", "onnx")):
        pytest.skip("OpenVINO is not installed (pip install 'featcache[openvino]')")
    real_import = importlib.import_module

    def broken(name, *args, **kwargs):
        if name == "onnx":
            raise AttributeError("module 'numpy' has no attribute 'exceptions'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", broken)
    assert resolve_runtime("auto", CPU) == "eager"
    assert "onnx is installed but does not import (AttributeError" in caplog.text
    with pytest.raises(EnvironmentFault, match="onnx is installed but does not import"):
        compile_forward("openvino", _taps(pretrained=False), torch.zeros(1, 3, 32, 32), CPU)


def test_eager_is_the_module_in_channels_last_and_the_gpu_default():
    taps = _taps(pretrained=False)
    x = torch.rand(2, 3, 32, 32)
    compiled = compile_forward("eager", taps, x[:1], CPU)
    assert compiled.streams == 1
    with torch.inference_mode():
        got, want = compiled.forward(x), taps(x)
    assert all(torch.allclose(got[k], want[k], atol=1e-5) for k in want)
    assert resolve_runtime("auto", torch.device("cuda")) == "eager"
    assert set(RUNTIMES) >= {"eager", "openvino"}


@pytest.mark.slow
def test_openvino_features_equal_eager_within_float16_rounding():
    """Pretrained Lite0, a spatial and a pooled tap, batches of two sizes (dynamic batch)."""
    _need_openvino()
    taps = _taps()
    x = torch.rand(5, 3, 96, 96) * 2 - 1
    compiled = compile_forward("openvino", taps, x[:2], CPU)
    assert not any(m.training for m in taps.modules())  # export left the module in eval mode
    with torch.inference_mode():
        want = taps(x)
    with ThreadPoolExecutor(compiled.streams + 1) as threads:  # calls from threads at once
        parts = list(threads.map(compiled.forward, [x[:2], x[2:], x[:2]]))
    got = {k: torch.cat([parts[0][k], parts[1][k]]) for k in want}
    assert all(torch.equal(parts[0][k], parts[2][k]) for k in want)
    last = compiled.forward(x[:2].contiguous(memory_format=torch.channels_last))  # the pipeline's
    assert all(torch.equal(parts[0][k], last[k]) for k in want)
    for k in want:
        assert got[k].shape == want[k].shape and got[k].dtype == torch.float32
        _within_float16(got[k].numpy(), want[k].numpy())


@pytest.mark.slow
def test_pipeline_with_openvino_stores_the_features_of_eager(image_folder, tmp_path):
    _need_openvino()
    folder = image_folder(per_class=5)
    feats = {}
    for runtime in ("eager", "openvino"):
        cfg = ExtractConfig(
            dataset=str(folder),
            data_dir=tmp_path / runtime,
            resolution=64,
            batch_size=4,
            runtime=runtime,
            layers=("pool", "block5"),
        )
        with FeatureCache(pipeline.run_extraction(cfg, progress=False).path) as cache:
            assert cache.meta["runtime"] == runtime
            feats[runtime] = {k: cache.features("test", k) for k in ("pool", "block5")}
    for k, want in feats["eager"].items():
        _within_float16(feats["openvino"][k].astype(np.float32), want.astype(np.float32))


def test_openvino_keeps_its_export_and_compiled_model_for_the_next_run(tmp_path, caplog):
    _need_openvino()
    built, taps = [], _taps(pretrained=False)

    def build():
        built.append(1)
        return taps

    x = torch.rand(3, 3, 32, 32)
    kept = tmp_path / "exports" / "lite0.onnx"
    first = compile_forward("openvino", build, x[:1], CPU, kept)
    assert kept.is_file() and len(built) == 1
    second = compile_forward("openvino", build, x[:1], CPU, kept)
    assert len(built) == 1  # read from the file, no model built
    a, b = first.forward(x), second.forward(x)
    assert all(torch.equal(a[k], b[k]) for k in a)
    blobs = list((tmp_path / "exports" / "openvino").glob("*.blob"))
    assert len(blobs) == 1  # the compiled model, kept beside the export
    blobs[0].chmod(0o600)
    blobs[0].write_bytes(blobs[0].read_bytes()[:100_000])  # a damaged one is compiled again
    assert all(torch.equal(a[k], compile_forward("openvino", build, x[:1], CPU, kept)
                           .forward(x)[k]) for k in a)
    kept.write_bytes(b"not an onnx file")
    third = compile_forward("openvino", build, x[:1], CPU, kept)
    assert len(built) == 2 and "ignoring unreadable export" in caplog.text
    assert all(torch.equal(a[k], third.forward(x)[k]) for k in a)


def test_a_worker_compiles_beside_decoding_with_torchs_threads(image_folder, tmp_path):
    """The model compiles on a thread of its own while batches decode, with the process's
    thread count (not the one thread of the glue around the runtime's forward pass)."""
    _need_openvino()
    cfg = ExtractConfig(dataset=str(image_folder(per_class=5)), data_dir=tmp_path,
                        resolution=32, batch_size=3, runtime="openvino")
    plan = plan_extraction(cfg)
    store = ShardStore.open(plan.parts, plan.manifest(list(cfg.layers), cfg.shard_rows))
    worker = ShardWorker(plan, store, device="cpu")
    try:
        specs = [spec for name, split in plan.dataset.splits.items()
                 for spec in shard_specs(name, len(split.ids), 4)]
        assert worker.compute_all(specs) == sum(len(s.ids) for s in plan.dataset.splits.values())
        alone = compile_forward("openvino", _taps(pretrained=False), torch.zeros(1, 3, 32, 32),
                                CPU)
        assert worker.streams == alone.streams
        assert all(store.done(spec) for spec in specs)
    finally:
        worker.close()
