"""The generator's backends behind one role, `ChunkStep` (DESIGN.md §2, §9).

A ChunkStep is the tensor work of one chunk for B streams at once, with static chunk shapes: `encode`
the streams' speech windows, then `__call__` samples the chunk from noise against the KV cache and
commits it. What a stream keeps between chunks (audio history, statistics, noise, clipping) is host code,
the same for every backend: engine.motion.generator.StreamingGenerator(step).

    torch        the module, eager, on a CPU                      engine.backends.eager.TorchStep
    torch, cuda  that step captured as a CUDA graph per batch      engine.backends.cuda_graph.CudaGraphStep
    onnxruntime  the exported speech and chunk graphs (CPU)        engine.backends.onnxruntime.OrtStep
    tensorrt     those graphs as TensorRT engines (GPU)            engine.backends.tensorrt.TensorRTStep

`load` picks one; `auto` (the default everywhere) is ONNX Runtime on a CPU, and on a GPU TensorRT where
its runtime is installed, else the CUDA graph. The exported backends run artifacts that export/ builds:
the caller hands `load` a `prepare` (engine/cli.py passes export.runtime.prepare), so engine/ never
imports export/; without one, `auto` is torch (library use needs no export step).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from engine.errors import UserError
from engine.motion.cache import KVCache
from engine.motion.model import Conditions, MotionConfig
from engine.motion.sampler import SamplerOptions

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")

# (weights, sampler options, backend) -> the directory of the exported graphs (and, for tensorrt, engines)
Prepare = Callable[[Path | None, SamplerOptions, str], Path]


class ChunkStep(Protocol):
    config: MotionConfig
    sampler: SamplerOptions  # exported backends bake it into their graph
    device: torch.device  # where conditions, noise and caches live

    def empty_cache(self, batch: int = 1) -> KVCache:
        """The first cache of `batch` streams."""

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, S, 4, 80) speech windows' mel -> (B, A, tokens, d) the chunks' speech features."""

    def __call__(self, cond: Conditions, noise: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """B streams' conditions, (B, L, D) noise and cache -> the clean chunk (B, L, D) within the
        spec's bounds (normalized) and the cache with it committed."""

    def with_sampler(self, sampler: SamplerOptions) -> ChunkStep:
        """This step sampling with `sampler` (a UserError naming the fix where the backend cannot)."""


def resolve(backend: str, device: str = "cpu", exports: bool = True) -> str:
    """The backend `auto` means on `device` (torch where nothing can prepare exported graphs: `exports`
    False); any other name as given."""
    if backend != "auto":
        return backend
    if not exports:
        return "torch"
    if device == "cpu":
        return "onnxruntime"
    from engine.backends.tensorrt import runtime_unavailable

    return "torch" if runtime_unavailable() else "tensorrt"


def check(backend: str, device: str = "cpu") -> None:
    """A UserError naming the fix when `backend` (resolved) cannot run on `device` here."""
    backend = resolve(backend, device)
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "onnxruntime" and device != "cpu":
        raise UserError("--backend onnxruntime runs on the CPU; on a GPU use --backend auto, tensorrt or torch")
    if backend == "tensorrt":
        from engine.backends.tensorrt import runtime_unavailable

        if reason := runtime_unavailable():
            raise UserError(f"--backend tensorrt cannot run here: {reason}. On a CPU use --backend onnxruntime")


def load(backend: str = "auto", checkpoint: str | Path | None = None, sampler: SamplerOptions | None = None, *,
         threads: int = 1, device: str = "cpu", prepare: Prepare | None = None) -> ChunkStep:
    """The chunk step of `checkpoint` (default: the shipped weights) sampled with `sampler` on a backend.

    torch loads the weights on `device` (on cuda, its step captured as CUDA graphs); onnxruntime and
    tensorrt run the graphs `prepare(checkpoint, sampler, backend)` returns the directory of (made once
    and cached by export.runtime.prepare)."""
    from engine.motion.learned import load_generator
    from engine.runtime import resolve_device

    check(backend, device)
    backend, sampler = resolve(backend, device, prepare is not None), sampler or SamplerOptions()
    if backend == "torch":
        model = load_generator(checkpoint).to(resolve_device(device))
        if model_device(model).type == "cuda":
            from engine.backends.cuda_graph import CudaGraphStep

            return CudaGraphStep(model, sampler)
        from engine.backends.eager import TorchStep

        return TorchStep(model, sampler)
    if prepare is None:
        raise UserError(f"--backend {backend} runs the generator's exported graphs, and nothing here can export "
                        f"them; run it through the `avatar` command, or export with `avatar export onnx --out DIR`")
    load_generator(checkpoint)  # a missing or foreign checkpoint fails here, with the usual message
    graphs = prepare(Path(checkpoint) if checkpoint is not None else None, sampler, backend)
    if backend == "onnxruntime":
        from engine.backends.onnxruntime import OrtStep

        return OrtStep(graphs, threads)
    from engine.backends.tensorrt import TensorRTStep

    return TensorRTStep(graphs)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def same_sampler(step: ChunkStep, sampler: SamplerOptions, where: str) -> ChunkStep:
    """`step` itself when it already samples with `sampler`; a UserError naming the fix otherwise (the
    exported backends' Euler steps and guidance are baked into their graph)."""
    if sampler != step.sampler:
        raise UserError(f"the generator graphs in {where} were exported for {step.sampler}; {sampler} needs its "
                        "own export (avatar export onnx --steps --guidance-audio ...)")
    return step
