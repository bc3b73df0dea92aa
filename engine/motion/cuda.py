"""The torch CUDA path (`--device cuda`): the generator's per-chunk step as one captured CUDA graph.

A chunk is embed + N Euler steps (three guidance rows each) + clamp + commit: a few hundred small
kernels, each launched from Python in eager mode, so on a GPU the launches, not the arithmetic, set
the chunk's time. Every shape in the step is static (the KV cache is a fixed window, the chunk a
fixed L), so it is captured once into a torch.cuda.CUDAGraph and replayed: per chunk, the inputs
are copied into the graph's own buffers, one replay launches everything, and the outputs are copied
out. One graph per model and sampler options serves every stream (sessions take turns under a
lock; their caches are inputs, not state), captured when the model is loaded (`warm_up`), before
any session's work can run beside the capture.
"""

from __future__ import annotations

import threading
import weakref

import torch

from engine.motion.cache import KVCache
from engine.motion.generator import StreamingGenerator, chunk_step, silence
from engine.motion.model import Conditions, MotionTransformer
from engine.motion.sampler import SamplerOptions

WARMUP_RUNS = 3  # eager runs on a side stream before capture (cuBLAS handles, allocator pools)
_LOCK = threading.Lock()  # one capture or replay at a time: they share the graphs' buffers
_GRAPHS: weakref.WeakKeyDictionary[MotionTransformer, dict[SamplerOptions, CapturedStep]] = weakref.WeakKeyDictionary()


class CapturedStep:
    """`fn(*tensors) -> tuple of tensors` captured for inputs shaped like `example`: call it with new
    tensors of the same shapes and dtypes; its outputs live in the graph's memory and are overwritten
    by the next call."""

    def __init__(self, fn, example: tuple[torch.Tensor, ...]):
        self.inputs = tuple(t.clone() for t in example)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: a thread other than this one launching work does not void the capture
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.outputs = fn(*self.inputs)

    def __call__(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for buffer, value in zip(self.inputs, tensors, strict=True):
            if buffer.shape != value.shape or buffer.dtype != value.dtype:
                raise ValueError(f"a captured step takes {tuple(buffer.shape)} {buffer.dtype}, "
                                 f"got {tuple(value.shape)} {value.dtype}")
            buffer.copy_(value, non_blocking=True)
        self.graph.replay()
        return self.outputs


class CudaGraphGenerator(StreamingGenerator):
    """StreamingGenerator on a CUDA device, its chunk step (generator.chunk_step) replayed from the
    model's CUDA graph for its sampler options; features, statistics, noise and clipping stay the
    shared host code."""

    def __init__(self, model: MotionTransformer, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        if self.device.type != "cuda":
            raise ValueError(f"CudaGraphGenerator needs the model on a CUDA device, not {self.device}")

    def _advance(self, cond: Conditions, noise: torch.Tensor) -> torch.Tensor:
        tensors = (*cond, noise, *self.cache)
        with _LOCK:
            step = _graph(self.model, self.options, tensors, len(cond))
            clean, *cache = step(*tensors)
            # the next replay (any stream's) overwrites the graph's outputs: keep copies (a few hundred kB)
            self.cache = KVCache(*(c.clone() for c in cache))
            return clean.clone()


def _graph(model: MotionTransformer, options: SamplerOptions, example: tuple, n_cond: int) -> CapturedStep:
    """The captured chunk step of `model` with `options` (captured now if it is the first)."""
    graphs = _GRAPHS.setdefault(model, {})
    if options not in graphs:
        def flat(*ts):
            clean, cache = chunk_step(model, options, Conditions(*ts[:n_cond]), ts[n_cond], KVCache(*ts[n_cond + 1:]))
            return (clean, *cache)

        graphs[options] = CapturedStep(flat, example)
    return graphs[options]


def warm_up(model: MotionTransformer, options: SamplerOptions) -> None:
    """Capture `model`'s chunk step for `options` now (one chunk of silence), so that no session's
    first chunk captures while others run."""
    cfg = model.config
    CudaGraphGenerator(model, options).step(silence(cfg.chunk + cfg.lookahead))
