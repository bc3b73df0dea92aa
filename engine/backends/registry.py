"""The chunk steps a process serves, each loaded once and shared by the sessions that use it."""

from __future__ import annotations

import threading
from pathlib import Path

from engine import backends
from engine.backends import ChunkStep, Prepare
from engine.backends.batching import BatchedStep
from engine.batch import cores


class StepRegistry:
    """Chunk steps by weights and Euler steps, on one backend and device with `threads` intra-op threads.

    With `batching` (the default), every step it hands out is a BatchedStep: the sessions sharing it share each
    backend call (engine.backends.batching). Sessions keep their own state, so sharing is safe either way. On a
    GPU one call of B streams costs about what one stream's does and the device runs one call at a time anyway;
    on the 2-core CPU batched sessions, made in phase groups (engine.batch.PhaseGroups) and rendered in worker
    processes (engine.render.pool, as the server runs them), held 6 sessions against 5 unbatched, at 149 % of a
    core against 162 % for 5 (benchmarks/results/stream_bench_batching.md)."""

    def __init__(self, backend: str = "auto", device: str = "cpu", threads: int = 1, prepare: Prepare | None = None,
                 batching: bool = True):
        backends.check(backend, device)
        self.backend, self.device, self.threads = backends.resolve(backend, device, prepare is not None), device, threads
        self.prepare, self.batching = prepare, batching
        self._steps: dict[tuple[Path, int], ChunkStep] = {}
        self._lock = threading.Lock()  # sessions open from several threads; a step loads once

    def get(self, weights: Path, steps: int) -> ChunkStep:
        """The step of `weights` sampled with `steps` Euler steps (the preset's) and the weights' own guidance."""
        from engine.motion.learned import LearnedOptions, weights_sampler

        with self._lock:
            key = (Path(weights), steps)
            if key not in self._steps:
                sampler = LearnedOptions(steps=steps, **weights_sampler(weights)).sampler()
                step = backends.load(self.backend, weights, sampler, threads=self.threads,
                                     device=self.device, prepare=self.prepare)
                if self.device == "cuda" and self.backend == "torch":
                    from engine.backends.cuda_graph import warm_up

                    warm_up(step)  # its CUDA graph, captured before any session runs beside it
                # on a CPU a lane a core: a phase group's batch runs beside another's (engine.batch; two
                # at once make 1.9 calls' worth: benchmarks/results/stage_overlap.md)
                lanes = cores() if self.device == "cpu" else 1
                self._steps[key] = BatchedStep(step, lanes=lanes) if self.batching else step
            return self._steps[key]

    def close(self) -> None:
        """Stop the batching workers (sessions using these steps must be closed first)."""
        for step in self._steps.values():
            if isinstance(step, BatchedStep):
                step.close()
        self._steps.clear()
