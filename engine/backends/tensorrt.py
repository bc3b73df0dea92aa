"""`--backend tensorrt`: the exported speech and chunk graphs as TensorRT engines on a GPU (cuda-python).

Engines are built by export/ (`avatar export tensorrt`, or export.runtime.prepare on first use); this module
only runs them. `TensorRTGraph` is one engine with its own device buffers and a CUDA stream; `TensorRTStep`
is the generator's ChunkStep over the speech and chunk engines. Its KV cache lives on the GPU as torch
tensors: each chunk binds the cache it is given as the engine's inputs and a fresh cache as its outputs, so
nothing of the cache crosses to the host between chunks. The engines have static shapes (one stream a
call): batching runs them once per stream.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np
import torch

from engine.errors import UserError
from engine.motion.cache import KVCache
from engine.motion.model import Conditions, MotionConfig
from engine.motion.sampler import SamplerOptions

LIBRARIES = ("tensorrt", "tensorrt_rtx")  # tried in this order: full TensorRT wins where both are installed
INSTALL = 'pip install ".[tensorrt]" (TensorRT-RTX from PyPI: builds engines on any machine, no GPU needed)'
INSTALL_RUNTIME = 'pip install "cuda-python>=12.6,<13"'


class TensorRTMissing(UserError):
    """Neither TensorRT nor TensorRT-RTX (or cuda-python, for running engines) can be imported."""



class EngineLoadError(RuntimeError):
    """An engine file cannot be run here (no GPU, wrong architecture, other library version)."""


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message names the call and CUDA's error."""



def load_tensorrt():
    """The TensorRT module: `tensorrt` where installed, else `tensorrt_rtx`."""
    for name in LIBRARIES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise TensorRTMissing(f"neither TensorRT nor TensorRT-RTX is installed; install it with {INSTALL}")


def _is_rtx(trt) -> bool:
    return trt.__name__.startswith("tensorrt_rtx")


def _recording_logger(trt):
    """A TensorRT logger that keeps error lines (to put in exceptions) and drops the rest: TensorRT is
    chatty, and on a CPU-only machine it logs a harmless CUDA driver error on some ops."""

    class RecordingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)

    return RecordingLogger()



def load_cudart():
    """cuda-python's CUDA runtime bindings (cuda.bindings.runtime, or cuda.cudart before 12.6)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as err:
            raise TensorRTMissing(f"running TensorRT engines needs cuda-python: {INSTALL_RUNTIME}") from err
    return cudart


def _cuda(cudart, call: str, result):
    """cuda-python returns (error, *values): raise CudaError on failure, else return the value(s)."""
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        raise CudaError(f"{call} failed: {err.name} ({cudart.cudaGetErrorString(err)[1].decode()})")
    return values[0] if len(values) == 1 else tuple(values) or None


def runtime_unavailable() -> str | None:
    """Why TensorRT engines cannot run on this machine, or None when they can (tests skip on the reason)."""
    try:
        trt, cudart = load_tensorrt(), load_cudart()
    except TensorRTMissing as err:
        return str(err)
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count == 0:
        smi = shutil.which("nvidia-smi")
        seen = smi and subprocess.run([smi, "-L"], check=False, capture_output=True, text=True).stdout.strip()
        return f"no usable CUDA device ({err.name})" + (f"; nvidia-smi sees: {seen}" if seen else "")
    if _is_rtx(trt):
        major = _cuda(cudart, "cudaDeviceGetAttribute", cudart.cudaDeviceGetAttribute(
            cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor, 0))
        minor = _cuda(cudart, "cudaDeviceGetAttribute", cudart.cudaDeviceGetAttribute(
            cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor, 0))
        targets = {int(v) for k, v in trt.ComputeCapability.__members__.items() if k.startswith("SM")}
        if 10 * major + minor not in targets:
            return (f"TensorRT-RTX engines do not run on sm_{major}{minor} (it targets sm_"
                    f"{', sm_'.join(map(str, sorted(targets)))}); install full TensorRT for this GPU")
    return None


@dataclass(frozen=True)
class DeviceTensor:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    is_input: bool

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


class TensorRTGraph:
    """One engine on the GPU: device buffers for every input and output allocated once, one stream.

        embed = TensorRTGraph("out/trt/embed.engine")
        outputs = embed.run({"mel": mel, ...})                  # host arrays in, host arrays out
        denoise = TensorRTGraph("out/trt/denoise.engine", stream=embed.stream)
        embed.run_device()                                      # inputs already in embed.buffers
        velocity = denoise.run_device({"levels": embed.buffers["levels"], "static": embed.buffers["static"]})

    run_device returns this graph's output buffers (device pointers), overwritten by its next call; graphs
    chained on device must share one stream so CUDA orders their work. Static shapes, or dynamic ones pinned
    by the build's one profile (the generator graphs' stream batch; export.tensorrt pins it to 1)."""

    def __init__(self, path: str | Path, stream=None):
        self.trt, self.cudart = trt, cudart = load_tensorrt(), load_cudart()
        if reason := runtime_unavailable():
            raise EngineLoadError(f"cannot run {path} here: {reason}")
        self._logger = _recording_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise EngineLoadError(f"{path} cannot be deserialized with {trt.__name__} {trt.__version__} on this "
                                  "GPU (built by another version or for another architecture?): "
                                  + " | ".join(self._logger.errors))
        self.context = self.engine.create_execution_context()
        self._own_stream = stream is None
        self.stream = _cuda(cudart, "cudaStreamCreate", cudart.cudaStreamCreate()) if stream is None else stream
        self.tensors: dict[str, DeviceTensor] = {}
        self.buffers: dict[str, int] = {}  # name -> device pointer, allocated once
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        for name in sorted(names, key=lambda n: not is_input[n]):  # inputs first: outputs' shapes follow them
            shape = tuple(self.engine.get_tensor_shape(name) if is_input[name] else self.context.get_tensor_shape(name))
            if -1 in shape and is_input[name]:
                # a dynamic axis (the generator graphs' stream batch) pinned by the build's one profile
                low, opt, high = (tuple(s) for s in self.engine.get_tensor_profile_shape(name, 0))
                if low != high:
                    self.close()
                    raise EngineLoadError(f"{path}: input {name} may take shapes {low} to {high}; build engines "
                                          "with every dimension pinned (export.tensorrt pins them to the manifest)")
                shape = opt
                self.context.set_input_shape(name, shape)
            if -1 in shape:
                self.close()
                raise EngineLoadError(f"{path}: tensor {name} has dynamic shape {shape}; build engines from "
                                      "static-shape graphs (export.specs)")
            spec = DeviceTensor(name, shape, np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))), is_input[name])
            self.tensors[name] = spec
            self.buffers[name] = int(_cuda(cudart, "cudaMalloc", cudart.cudaMalloc(max(spec.nbytes, 1))))
            self.context.set_tensor_address(name, self.buffers[name])

    @property
    def inputs(self) -> dict[str, DeviceTensor]:
        return {n: t for n, t in self.tensors.items() if t.is_input}

    @property
    def outputs(self) -> dict[str, DeviceTensor]:
        return {n: t for n, t in self.tensors.items() if not t.is_input}

    def _copy(self, dst: int, src: int, nbytes: int, kind) -> None:
        _cuda(self.cudart, "cudaMemcpyAsync", self.cudart.cudaMemcpyAsync(dst, src, nbytes, kind, self.stream))

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Host arrays in (every input, its exact shape), host arrays out; synchronizes the stream."""
        cudart = self.cudart
        if missing := set(self.inputs) ^ set(inputs):
            raise ValueError(f"inputs must be exactly {sorted(self.inputs)}; mismatched: {sorted(missing)}")
        staged = []  # host copies kept alive until the stream is synchronized
        for name, spec in self.inputs.items():
            host = np.ascontiguousarray(inputs[name], dtype=spec.dtype)
            if host.shape != spec.shape:
                raise ValueError(f"input {name} must have shape {spec.shape}, got {host.shape}")
            staged.append(host)
            self._copy(self.buffers[name], host.ctypes.data, host.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)
        self.run_device()
        results = {name: np.empty(spec.shape, spec.dtype) for name, spec in self.outputs.items()}
        for name, host in results.items():
            self._copy(host.ctypes.data, self.buffers[name], host.nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        _cuda(cudart, "cudaStreamSynchronize", cudart.cudaStreamSynchronize(self.stream))
        return results

    def run_device(self, inputs: Mapping[str, int] | None = None, outputs: Mapping[str, int] | None = None
                   ) -> dict[str, int]:
        """Enqueue one execution on the stream reading `inputs` and writing `outputs` (device pointers, e.g.
        another graph's outputs; unnamed ones are this graph's own buffers); returns the output pointers."""
        inputs, outputs = inputs or {}, outputs or {}
        if unknown := (set(inputs) - set(self.inputs)) | (set(outputs) - set(self.outputs)):
            raise ValueError(f"unknown tensors {sorted(unknown)}; this engine takes {sorted(self.inputs)} "
                             f"and gives {sorted(self.outputs)}")
        bound = {name: int({**inputs, **outputs}.get(name, self.buffers[name])) for name in self.tensors}
        for name, address in bound.items():
            self.context.set_tensor_address(name, address)
        if not self.context.execute_async_v3(int(self.stream)):
            raise CudaError("execute_async_v3 failed: " + " | ".join(self._logger.errors))
        return {name: bound[name] for name in self.outputs}

    def download(self, name: str) -> np.ndarray:
        """A copy of one of this graph's buffers on the host, once the stream's work so far is done."""
        spec, cudart = self.tensors[name], self.cudart
        host = np.empty(spec.shape, spec.dtype)
        self._copy(host.ctypes.data, self.buffers[name], host.nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        _cuda(cudart, "cudaStreamSynchronize", cudart.cudaStreamSynchronize(self.stream))
        return host

    def close(self) -> None:
        for ptr in self.buffers.values():
            _cuda(self.cudart, "cudaFree", self.cudart.cudaFree(ptr))
        self.buffers = {}
        if self._own_stream and self.stream is not None:
            _cuda(self.cudart, "cudaStreamDestroy", self.cudart.cudaStreamDestroy(self.stream))
            self.stream = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TensorRTStep:
    """ChunkStep of the speech and chunk engines built from the graphs in `graphs` (graphs/tensorrt/*.engine),
    one stream a call. Inputs and outputs are torch CUDA tensors bound in place, on torch's current stream,
    so a stream's KV cache stays on the GPU from chunk to chunk."""

    max_batch = 1  # static engine shapes: one stream a call

    def __init__(self, graphs: str | Path):
        from engine.backends.onnxruntime import read_manifest

        self.dir = Path(graphs)
        manifest = read_manifest(self.dir)
        self.config = MotionConfig.from_dict(manifest["config"])
        self.sampler = SamplerOptions(**manifest["sampler"])
        self.device = torch.device("cuda", torch.cuda.current_device())
        stream = torch.cuda.current_stream(self.device).cuda_stream
        self.chunk = TensorRTGraph(self.dir / "tensorrt" / "chunk.engine", stream=stream)
        self.speech = TensorRTGraph(self.dir / "tensorrt" / "speech.engine", stream=stream)
        self._lock = threading.Lock()  # an execution context binds one call's addresses at a time

    def empty_cache(self, batch: int = 1) -> KVCache:
        self._one_stream(batch)
        return KVCache.empty(self.config, 1, self.device)

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        return self._run(self.speech, {"mel": mel})["speech"]

    def __call__(self, cond: Conditions, noise: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        out = self._run(self.chunk, {"speech": cond.speech, "prosody": cond.prosody, "stats": cond.stats,
                                     "emotion": cond.emotion, "ref": cond.ref, "noise": noise, **cache._asdict()})
        return out["clean"], KVCache(*(out[f"new_{name}"] for name in KVCache._fields))

    def with_sampler(self, sampler: SamplerOptions) -> TensorRTStep:
        from engine.backends import same_sampler

        return same_sampler(self, sampler, str(self.dir))

    def _one_stream(self, batch: int) -> None:
        if batch != 1:
            raise ValueError(f"TensorRT engines run one stream a call (static shapes), not {batch}")

    def _run(self, graph: TensorRTGraph, feed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Torch tensors in (moved to the GPU and the engine's dtypes as needed), fresh GPU tensors out."""
        self._one_stream(len(next(iter(feed.values()))))  # mel or speech: (B, ...)
        inputs = {name: feed[name].to(self.device, _torch_dtype(spec.dtype)).contiguous()
                  for name, spec in graph.inputs.items()}
        outputs = {name: torch.empty(spec.shape, dtype=_torch_dtype(spec.dtype), device=self.device)
                   for name, spec in graph.outputs.items()}
        with self._lock:
            graph.run_device({n: t.data_ptr() for n, t in inputs.items()}, {n: t.data_ptr() for n, t in outputs.items()})
        return outputs


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype)).dtype
