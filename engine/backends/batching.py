"""Continuous batching: many streams' chunks in one backend call (DESIGN.md §2).

Each session steps its own StreamingGenerator from its own worker thread. Handed a `BatchedStep`
instead of the backend's step, the calls that meet share one backend call (engine.batch.Combiner):
a call that finds the backend free runs at once, on its caller's thread, with every call that queued
while the backend was busy (stacked along the batch, KV caches included), and the results are split
back. Nothing waits to fill a batch, no thread of its own hands calls over, and a session joining or
leaving changes only the next batch's size. Each stream keeps its own state (cache, audio history,
noise, pts) in its generator, so its motion is what it gets alone (to float rounding of the batched
products: tests/engine/backends/test_batching.py).

The speech encoder and the chunk step batch separately (`lanes` batches of each at once): one
stream's encode can run beside another's chunk.
"""

from __future__ import annotations

import threading

import torch

from engine.backends import ChunkStep
from engine.batch import MAX_BATCH, Combiner
from engine.motion.cache import KVCache
from engine.motion.model import Conditions
from engine.motion.sampler import SamplerOptions


class BatchedStep:
    """A ChunkStep that any number of threads call at once; calls meeting share one call of `step`.
    `calls` and `streams` count the backend calls made and the stream-chunks they carried (its
    with_sampler steps' included)."""

    def __init__(self, step: ChunkStep, max_batch: int = MAX_BATCH, lanes: int = 1):
        self.step, self.lanes = step, lanes
        self.config, self.sampler, self.device = step.config, step.sampler, step.device
        self.max_batch = min(max_batch, getattr(step, "max_batch", max_batch))
        self._encode = Combiner(self._encode_batch, lanes, self.max_batch)
        self._chunk = Combiner(self._chunk_batch, lanes, self.max_batch)
        self._samplers: dict[SamplerOptions, BatchedStep] = {}  # with_sampler's steps: one a sampler, shared
        self._lock = threading.Lock()

    @property
    def calls(self) -> int:
        return self._encode.batches + self._chunk.batches + sum(s.calls for s in list(self._samplers.values()))

    @property
    def streams(self) -> int:
        return self._encode.items + self._chunk.items + sum(s.streams for s in list(self._samplers.values()))

    def empty_cache(self, batch: int = 1) -> KVCache:
        return self.step.empty_cache(batch)

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        return self._encode(mel)

    def __call__(self, cond: Conditions, noise: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        return self._chunk((cond, noise, cache))

    def with_sampler(self, sampler: SamplerOptions) -> ChunkStep:
        """The step sampling with `sampler`: the same one for every session asking for it, so their calls meet."""
        if sampler == self.sampler:
            return self
        with self._lock:
            if sampler not in self._samplers:
                self._samplers[sampler] = BatchedStep(self.step.with_sampler(sampler), self.max_batch, self.lanes)
            return self._samplers[sampler]

    def close(self) -> None:
        """Refuse later calls (those under way finish)."""
        self._encode.close()
        self._chunk.close()
        for step in self._samplers.values():
            step.close()

    def _encode_batch(self, mels: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(mels) == 1:  # alone: the step itself, without stacking copies
            return [self.step.encode(mels[0])]
        return list(self.step.encode(torch.cat(mels)).split(1))

    def _chunk_batch(self, args: list[tuple]) -> list[tuple[torch.Tensor, KVCache]]:
        if len(args) == 1:
            return [self.step(*args[0])]
        conds, noises, caches = zip(*args, strict=True)
        cond = Conditions(*(torch.cat(field) for field in zip(*conds, strict=True)))
        cache = KVCache(*(torch.cat(field, dim=1 if name in ("keys", "values") else 0)
                          for name, field in zip(KVCache._fields, zip(*caches, strict=True), strict=True)))
        clean, new = self.step(cond, torch.cat(noises), cache)
        return [(clean[i : i + 1], KVCache(new.keys[:, i : i + 1], new.values[:, i : i + 1], new.valid[i : i + 1],
                                          new.pos[i : i + 1])) for i in range(len(args))]
