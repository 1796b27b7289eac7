"""Runtimes for the forward pass: a name maps to a function that compiles the taps module.

``compile(build, example, cache, threads) -> Compiled`` takes a function building the
module of :func:`featcache.extract.backbones.registry.make_feature_extractor`, an example
input batch, where
an export may be kept and how many threads a runtime with threads of its own may use, and
returns a forward callable with the module's contract, an input batch [B, 3, H, W] (the
example's dtype: uint8 where the module starts with
:class:`featcache.extract.data.preprocess.Normalize`; channels last in memory is fastest, as the
pipeline's batches are) -> {alias: tensor}, and how many calls of it may run at once from
different threads (OpenVINO's streams; eager: one).

OpenVINO runs EfficientNet-Lite0 on the 2-core development CPU 2-3x faster than eager
PyTorch (docs/extract.md, "Runtimes"); its features differ from eager PyTorch's by at most
2e-6 of the layer's largest value, i.e. by float16 rounding (what the cache stores), the
same order as the difference eager PyTorch itself shows between batch sizes.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import logging
import queue
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import torch
from torch import nn

from featcache.errors import EnvironmentFault, UsageError
from featcache.files import atomic_write

log = logging.getLogger(__name__)
EXPORT_VERSION = 1  # of onnx_export: bump where a change alters the exported graph
Forward = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class Compiled:
    """A forward pass, and how many threads may call it at once to keep the device busy."""

    forward: Forward
    streams: int = 1


Build = Callable[[], nn.Module]


@dataclass(frozen=True)
class Runtime:
    name: str
    compile: Callable[[Build, torch.Tensor, Path | None, int], Compiled]
    devices: tuple[str, ...]
    extra: str | None  # the pip extra that installs it
    description: str
    modules: tuple[str, ...] = ()  # what it imports

    def problem(self) -> str | None:
        """Why this runtime cannot run here (a module missing or broken), or None."""
        for module in self.modules:
            try:
                importlib.import_module(module)
            except ImportError:
                return (f"runtime {self.name!r} needs {module}: "
                        f"pip install 'featcache[{self.extra}]'")
            except Exception as exc:  # installed but broken, e.g. built for another numpy
                return (f"runtime {self.name!r}: {module} is installed but does not import "
                        f"({type(exc).__name__}: {exc})")
        return None


def _eager(build: Build, example: torch.Tensor, cache: Path | None, threads: int) -> Compiled:
    """PyTorch as it is, in channels-last layout (faster convolutions on CPU and GPU)."""
    module = build().eval().to(memory_format=torch.channels_last)

    def forward(x: torch.Tensor) -> Mapping[str, torch.Tensor]:
        return module(x.contiguous(memory_format=torch.channels_last))

    return Compiled(forward)


def onnx_export(module: nn.Module, example: torch.Tensor) -> tuple[bytes, list[str]]:
    """The module as ONNX with a dynamic batch axis; outputs named by the taps' aliases."""
    module.eval()  # export restores the mode it finds, on every submodule
    with torch.inference_mode():
        names = list(module(example[:1]))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its successor
        torch.onnx.export(
            module,
            (example,),
            buffer,
            input_names=["x"],
            output_names=names,
            dynamic_axes={"x": {0: "batch"}, **{n: {0: "batch"} for n in names}},
            dynamo=False,
            opset_version=17,
            do_constant_folding=False,  # OpenVINO folds constants itself; 0.07 s less here
        )
    module.eval()
    return buffer.getvalue(), names


def _cached_export(core: object, build: Build, example: torch.Tensor,
                   cache: Path | None) -> object:
    """OpenVINO's model of the export kept at ``cache``, else of a fresh export (then kept)."""
    if cache is not None and cache.is_file():
        try:
            return core.read_model(str(cache))
        except RuntimeError as exc:  # unreadable: export again over it
            log.warning("ignoring unreadable export %s (%s)", cache, exc)
    data, _ = onnx_export(build(), example)
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(cache, lambda fh: fh.write(data))
        except OSError as exc:  # a convenience: the run goes on without it
            log.warning("could not keep the export at %s (%s)", cache, exc)
    return core.read_model(io.BytesIO(data))


def _openvino(build: Build, example: torch.Tensor, cache: Path | None,
              threads: int) -> Compiled:
    """OpenVINO's throughput mode: one infer request per stream (one stream per core here).

    Each call takes an idle request and runs a whole batch on it, releasing the GIL, so as
    many threads as streams keep every core busy with no barrier between them: splitting
    each batch across the streams and waiting for both made every batch wait for its slower
    half and left the cores idle while the next batch was prepared.

    ``cache``: where the ONNX export is kept (a file name that stands for everything the
    export depends on); a later run reads it and builds no PyTorch model (0.3-0.4 s less).
    OpenVINO keeps its compiled models in ``openvino/`` beside it (``CACHE_DIR``: keyed by
    its hash of the graph and weights; a damaged one is compiled again): 0.15 -> 0.07 s.
    """
    import openvino as ov

    core = ov.Core()
    if cache is not None:
        core.set_property({"CACHE_DIR": str(cache.parent / "openvino")})
    model = _cached_export(core, build, example, cache)
    layout = ov.preprocess.PrePostProcessor(model)  # takes batches channels last, no copy
    layout.input().tensor().set_layout(ov.Layout("NHWC"))
    layout.input().model().set_layout(ov.Layout("NCHW"))
    compiled = core.compile_model(
        layout.build(),
        "CPU",
        {
            # float32 throughout: on CPUs with bf16 support OpenVINO would otherwise use bf16
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "THROUGHPUT",
            "INFERENCE_NUM_THREADS": threads,
        },
    )
    streams = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    idle: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(streams):
        idle.put(compiled.create_infer_request())
    names = [output.get_any_name() for output in compiled.outputs]

    def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
        request = idle.get()
        try:  # the leanest of OpenVINO's Python calls: 0.27 ms a call against infer's 0.4
            pixels = x.permute(0, 2, 3, 1).contiguous().numpy()  # no copy if channels last
            request.set_input_tensor(ov.Tensor(pixels, shared_memory=True))
            request.infer()
            return {n: torch.from_numpy(request.get_output_tensor(i).data.copy())
                    for i, n in enumerate(names)}
        finally:
            idle.put(request)

    # One call on this thread first: two threads making OpenVINO's first call at once
    # deadlocked in pybind11's one-time set-up of the numpy API (seen in the test suite).
    forward(example)
    return Compiled(forward, streams)


RUNTIMES: Mapping[str, Runtime] = MappingProxyType(
    {
        "eager": Runtime("eager", _eager, ("cpu", "cuda"), None, "PyTorch as it is"),
        "openvino": Runtime(
            "openvino",
            _openvino,
            ("cpu",),
            "openvino",
            "OpenVINO (float32), from an ONNX export of the taps",
            ("openvino", "onnx"),
        ),
    }
)


def glue_threads(runtime: str) -> int:
    """torch's threads around a runtime's forward pass: all of them for eager PyTorch, one
    beside another runtime, whose own threads would otherwise fight torch's idle-spinning
    OpenMP threads for the cores (OpenVINO end to end: 603 -> 784 img/s at 112 px)."""
    return torch.get_num_threads() if runtime == "eager" else 1


def resolve_runtime(name: str, device: torch.device) -> str:
    """``name``, or for ``auto``: OpenVINO on a CPU where it is installed, else eager PyTorch."""
    if name != "auto":
        return name
    if device.type != "cpu":
        return "eager"
    openvino = RUNTIMES["openvino"]
    if not all(importlib.util.find_spec(m) for m in openvino.modules):
        return "eager"  # not installed: the usual case, nothing to say
    problem = openvino.problem()
    if problem is not None:
        log.warning("%s; using eager PyTorch", problem)
        return "eager"
    return "openvino"


def compile_forward(
    name: str, module: nn.Module | Build, example: torch.Tensor, device: torch.device,
    cache: Path | None = None, threads: int | None = None,
) -> Compiled:
    """``module`` (or a function that builds it, called only where needed) compiled by runtime
    ``name`` for ``device``; ``example``: one input batch; ``cache``: where a runtime that
    exports the module may keep the export (its name must stand for the module's content);
    ``threads``: how many a runtime with threads of its own uses (default: torch's)."""
    build = (lambda: module) if isinstance(module, nn.Module) else module
    return usable_runtime(name, device).compile(build, example, cache,
                                                threads or torch.get_num_threads())


def usable_runtime(name: str, device: torch.device) -> Runtime:
    """Runtime ``name``, checked to exist, to run on ``device`` and to import here."""
    if name not in RUNTIMES:
        raise UsageError(f"unknown runtime {name!r}; valid: {', '.join(RUNTIMES)}")
    runtime = RUNTIMES[name]
    if device.type not in runtime.devices:
        raise UsageError(
            f"runtime {name!r} runs on {', '.join(runtime.devices)}, not {device.type}; "
            "valid for it: " + ", ".join(n for n, r in RUNTIMES.items() if device.type in r.devices)
        )
    problem = runtime.problem()
    if problem is not None:
        raise EnvironmentFault(problem)
    return runtime
