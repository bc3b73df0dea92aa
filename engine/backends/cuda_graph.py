"""`--backend torch --device cuda`: the generator's per-chunk step as one captured CUDA graph.

A chunk is embed + N Euler steps (three guidance rows each) + clamp + commit: a few hundred small
kernels, each launched from Python in eager mode, so on a GPU the launches, not the arithmetic, set
the chunk's time. Every shape in the step is static (the KV cache is a fixed window, the chunk a
fixed L), so it is captured once into a torch.cuda.CUDAGraph and replayed: per chunk, the inputs
are copied into the graph's own buffers, one replay launches everything, and the outputs are copied
out. One graph per model, sampler options and batch size serves every stream (calls take turns
under a lock; caches are inputs, not state); the one-stream graph is captured when the model is loaded
(`warm_up`), before any session's work can run beside the capture, a batched one on first use.
"""

from __future__ import annotations

import threading
import weakref

import torch

from engine.backends.eager import TorchStep, chunk_step
from engine.motion.cache import KVCache
from engine.motion.model import Conditions, MotionTransformer
from engine.motion.sampler import SamplerOptions

WARMUP_RUNS = 3  # eager runs on a side stream before capture (cuBLAS handles, allocator pools)
_LOCK = threading.Lock()  # one capture or replay at a time: they share the graphs' buffers
_GRAPHS: weakref.WeakKeyDictionary[MotionTransformer, dict[tuple[SamplerOptions, int], CapturedStep]] = weakref.WeakKeyDictionary()


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


class CudaGraphStep:
    """ChunkStep of a torch MotionTransformer on a CUDA device: `chunk_step` replayed from the model's
    CUDA graph for its sampler options and batch size (captured on first use of that batch size);
    the speech encoder runs eager."""

    def __init__(self, model: MotionTransformer, sampler: SamplerOptions | None = None):
        sampler = sampler or SamplerOptions()
        self.eager = TorchStep(model, sampler)
        if self.device.type != "cuda":
            raise ValueError(f"CudaGraphStep needs the model on a CUDA device, not {self.device}")
        self.model, self.sampler, self.config = model, sampler, model.config

    @property
    def device(self) -> torch.device:
        return self.eager.device

    def empty_cache(self, batch: int = 1) -> KVCache:
        return self.eager.empty_cache(batch)

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        return self.eager.encode(mel)

    def __call__(self, cond: Conditions, noise: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        tensors = (*cond, noise, *cache)
        with _LOCK:
            step = _graph(self.model, self.sampler, tensors, len(cond))
            clean, *new = step(*tensors)
            # the next replay (any stream's) overwrites the graph's outputs: keep copies (a few hundred kB)
            return clean.clone(), KVCache(*(c.clone() for c in new))

    def with_sampler(self, sampler: SamplerOptions) -> CudaGraphStep:
        return self if sampler == self.sampler else CudaGraphStep(self.model, sampler)


def _graph(model: MotionTransformer, options: SamplerOptions, example: tuple, n_cond: int) -> CapturedStep:
    """The captured chunk step of `model` with `options` for this batch size (captured now if new)."""
    graphs = _GRAPHS.setdefault(model, {})
    key = (options, example[0].shape[0])
    if key not in graphs:
        def flat(*ts):
            clean, cache = chunk_step(model, options, Conditions(*ts[:n_cond]), ts[n_cond], KVCache(*ts[n_cond + 1:]))
            return (clean, *cache)

        graphs[key] = CapturedStep(flat, example)
    return graphs[key]


def warm_up(step: CudaGraphStep) -> None:
    """Capture the one-stream chunk step now (one chunk of silence), so that no session's first chunk
    captures while others run."""
    from engine.motion.generator import StreamingGenerator, silence

    cfg = step.config
    StreamingGenerator(step).step(silence(cfg.chunk + cfg.lookahead))
