"""The renderer's frames batched across sessions: the frames several sessions ask for at once, one call.

Sessions showing the same avatar share its Renderer. Handed a `BatchedRenderer` instead, their
`frames` calls that meet (engine.batch.Combiner) become one `Renderer.frames` over their motion
stacked, and each gets its own rows back: a lone session renders at once on its own thread, and the
busier the renderer, the more frames a call carries. A batch is cheaper per frame (512 px on one thread:
5.9 ms a frame alone, 4.5 in fours, 4.1 in eights, benchmarks/results/stage_costs.md: the warp's bases,
the rest image and the mouth and lid layers are read once a call, not once a frame), and on a CPU the renderer's working set stays in the
cache for the whole batch. Each frame is its own motion's (frames of sessions rendered together equal
those rendered alone to a grey level: tests/engine/render/test_batched_renderer.py). Given a RenderPool
(engine.render.pool), its batches render in the pool's worker processes, a lane a worker, so two batches
at once make two renders' worth, not the 1.3-1.5 they make sharing one process's GIL.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.batch import MAX_BATCH, Combiner, yielding
from engine.render.pool import RenderPool


class BatchedRenderer:
    """`frames((B, D) raw coefficients) -> (B, S, S, 3) uint8` like the Renderer it wraps, from any thread;
    calls that meet share one call of `renderer.frames` (at most `lanes` at once; with a `pool`, one a worker of
    it, made there). `calls` and `frames_out` count the renderer calls made and the frames they carried."""

    def __init__(self, renderer: torch.nn.Module, lanes: int = 1, max_batch: int = MAX_BATCH,
                 pool: RenderPool | None = None):
        self.renderer, self.pool = renderer, pool
        self._combiner = Combiner(self._render, lanes if pool is None else pool.workers, max_batch)
        self.frames_out = 0

    @property
    def calls(self) -> int:
        return self._combiner.batches

    def frames(self, coeffs: torch.Tensor) -> np.ndarray:
        return self._combiner(coeffs)

    def _render(self, batch: list[torch.Tensor]) -> list[np.ndarray]:
        coeffs = batch[0] if len(batch) == 1 else torch.cat(batch)
        if self.pool is not None:
            with yielding():  # this thread only waits for the worker: its compute slot goes to another
                images = self.pool.render(self.renderer, coeffs)
        else:
            with torch.inference_mode():
                images = self.renderer.frames(coeffs)
        self.frames_out += len(images)
        ends = np.cumsum([len(coeffs) for coeffs in batch])
        return np.split(images, ends[:-1])

    def close(self) -> None:
        """Refuse later calls (those under way finish)."""
        self._combiner.close()
