"""Runtimes for the forward pass: a name maps to a function that compiles the taps module.

``compile(module, example) -> Compiled`` takes the module of
:func:`extract.backbones.make_feature_extractor` and an example input batch, and returns a
forward callable with the module's contract, float [B, 3, H, W] -> {alias: tensor}, and how
many calls of it may run at once from different threads (OpenVINO's streams; eager: one).

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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import nn

from .errors import EnvironmentFault, UsageError

log = logging.getLogger(__name__)
Forward = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class Compiled:
    """A forward pass, and how many threads may call it at once to keep the device busy."""

    forward: Forward
    streams: int = 1


@dataclass(frozen=True)
class Runtime:
    name: str
    compile: Callable[[nn.Module, torch.Tensor], Compiled]
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


def _eager(module: nn.Module, example: torch.Tensor) -> Compiled:
    """PyTorch as it is, in channels-last layout (faster convolutions on CPU and GPU)."""
    module = module.eval().to(memory_format=torch.channels_last)

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


def _openvino(module: nn.Module, example: torch.Tensor) -> Compiled:
    """OpenVINO's throughput mode: one infer request per stream (one stream per core here).

    Each call takes an idle request and runs a whole batch on it, releasing the GIL, so as
    many threads as streams keep every core busy with no barrier between them: splitting
    each batch across the streams and waiting for both made every batch wait for its slower
    half and left the cores idle while the next batch was prepared.
    """
    import openvino as ov

    data, names = onnx_export(module, example)
    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(io.BytesIO(data)),
        "CPU",
        {
            # float32 throughout: on CPUs with bf16 support OpenVINO would otherwise use bf16
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "THROUGHPUT",
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        },
    )
    streams = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    idle: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(streams):
        idle.put(compiled.create_infer_request())
    outputs = [compiled.output(n) for n in names]

    def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
        request = idle.get()
        try:
            request.infer({0: x.contiguous().numpy()})
            return {n: torch.from_numpy(request.get_tensor(o).data.copy())
                    for n, o in zip(names, outputs, strict=True)}
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


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch ops with ``n`` intra-op threads, restoring the previous count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    name: str, module: nn.Module, example: torch.Tensor, device: torch.device
) -> Compiled:
    """``module`` compiled by runtime ``name`` for ``device`` (``example``: one input batch)."""
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
    return runtime.compile(module, example)
