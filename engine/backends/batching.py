"""Continuous batching: many streams' chunks in one backend call (DESIGN.md §2).

Each session steps its own StreamingGenerator from its own worker thread. Handed a `BatchedStep`
instead of the backend's step, their calls queue, and one thread runs them: every call that arrived
while the backend was busy goes into the next call together (stacked along the batch, KV caches
included), and the results are split back. Nothing waits to fill a batch: a lone stream runs at once,
and a session joining or leaving changes only the next batch's size. Each stream keeps its own state
(cache, audio history, noise, pts) in its generator, so its motion is what it gets alone (to float
rounding of the batched products: tests/engine/backends/test_batching.py).
"""

from __future__ import annotations

import threading
from collections import deque

import torch

from engine.backends import ChunkStep
from engine.motion.cache import KVCache
from engine.motion.model import Conditions
from engine.motion.sampler import SamplerOptions

MAX_BATCH = 32  # streams in one call at most (a bound on one call's time, not a tuned value)


class _Call:
    def __init__(self, kind: str, args: tuple):
        self.kind, self.args = kind, args
        self.done = threading.Event()
        self.result = self.error = None


class BatchedStep:
    """A ChunkStep that any number of threads call at once; calls meeting in the queue share one call of
    `step`. `calls` and `streams` count the backend calls made and the stream-chunks they carried."""

    def __init__(self, step: ChunkStep, max_batch: int = MAX_BATCH):
        self.step = step
        self.config, self.sampler, self.device = step.config, step.sampler, step.device
        self.max_batch = min(max_batch, getattr(step, "max_batch", max_batch))
        self.calls = self.streams = 0
        self._queue: deque[_Call] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="avatar-batch", daemon=True)
        self._worker.start()

    def empty_cache(self, batch: int = 1) -> KVCache:
        return self.step.empty_cache(batch)

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        return self._submit("encode", (mel,))

    def __call__(self, cond: Conditions, noise: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        return self._submit("chunk", (cond, noise, cache))

    def with_sampler(self, sampler: SamplerOptions) -> ChunkStep:
        return self if sampler == self.sampler else BatchedStep(self.step.with_sampler(sampler), self.max_batch)

    def close(self) -> None:
        """Stop the worker once the queued calls are done; later calls raise."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join()

    def _submit(self, kind: str, args: tuple):
        call = _Call(kind, args)
        with self._cond:
            if self._closed:
                raise RuntimeError("this BatchedStep is closed")
            self._queue.append(call)
            self._cond.notify()
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed)
                if not self._queue:
                    return
                group = [self._queue.popleft()]
                for call in list(self._queue):  # everything of the same kind that is waiting, in order
                    if call.kind == group[0].kind and len(group) < self.max_batch:
                        self._queue.remove(call)
                        group.append(call)
            try:
                if len(group) == 1:  # alone: the step itself, without stacking copies
                    call = group[0]
                    results = [(self.step.encode if call.kind == "encode" else self.step)(*call.args)]
                else:
                    results = (self._encode if group[0].kind == "encode" else self._chunk)([c.args for c in group])
            except Exception as err:  # every stream in the call sees the failure; the worker goes on
                results, error = [None] * len(group), err
            else:
                error = None
                self.calls += 1
                self.streams += len(group)
            for call, result in zip(group, results, strict=True):
                call.result, call.error = result, error
                call.done.set()

    def _encode(self, args: list[tuple]) -> list[torch.Tensor]:
        return list(self.step.encode(torch.cat([mel for mel, in args])).split(1))

    def _chunk(self, args: list[tuple]) -> list[tuple[torch.Tensor, KVCache]]:
        conds, noises, caches = zip(*args, strict=True)
        cond = Conditions(*(torch.cat(field) for field in zip(*conds, strict=True)))
        cache = KVCache(*(torch.cat(field, dim=1 if name in ("keys", "values") else 0)
                          for name, field in zip(KVCache._fields, zip(*caches, strict=True), strict=True)))
        clean, new = self.step(cond, torch.cat(noises), cache)
        return [(clean[i : i + 1], KVCache(new.keys[:, i : i + 1], new.values[:, i : i + 1], new.valid[i : i + 1],
                                          new.pos[i : i + 1])) for i in range(len(args))]
