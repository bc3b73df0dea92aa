"""Frames rendered in worker processes (engine.render.pool): the same frames, errors named, a dead worker replaced."""

import copy
import gc
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from engine.motion import spec
from engine.render.batching import BatchedRenderer
from engine.render.pool import RenderPool, RenderWorkerError
from tests.engine.render.test_renderer import POSES
from tests.engine.stream.harness import small_renderer


@pytest.fixture(scope="module")
def pool():
    pool = RenderPool(2)
    yield pool
    pool.close()


def motion(first: int, frames: int = 2) -> torch.Tensor:
    return torch.from_numpy(np.stack([spec.from_dict(POSES[(first + i) % len(POSES)]) for i in range(frames)]))


def test_a_worker_renders_the_frames_the_renderer_renders(pool):
    """Bit for bit: the worker runs the same Renderer.frames on a copy of the same renderer, into shared memory."""
    renderer = small_renderer()
    for first, frames in ((0, 2), (1, 5), (2, 1)):  # the buffer grows for the larger call and is reused after
        coeffs = motion(first, frames)
        got = pool.render(renderer, coeffs)
        assert got.shape == (frames, renderer.size, renderer.size, 3) and got.dtype == np.uint8
        assert np.array_equal(got, renderer.frames(coeffs))
    assert pool.cpu_seconds() > 0


def test_warming_leaves_every_worker_holding_the_renderer():
    renderer, pool = small_renderer(), RenderPool(2)
    try:
        pool.warm(renderer)
        assert all(w.started and pool._keys[renderer] in w.known for w in pool._all)
    finally:
        pool.close()


def test_two_calls_at_once_each_get_their_own_frames(pool):
    """Two threads, two workers: each caller gets its own motion's frames, never the other's."""
    renderer = small_renderer()
    coeffs = [motion(i, 3) for i in range(2)]
    alone = [renderer.frames(c) for c in coeffs]
    got, errors = {}, []

    def call(i):
        try:
            for _ in range(5):
                got[i] = pool.render(renderer, coeffs[i])
                assert np.array_equal(got[i], alone[i])
        except Exception as err:  # noqa: BLE001 - surfaced below
            errors.append(err)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(got) == 2


def test_a_renderer_error_names_itself_and_the_worker_goes_on(pool):
    renderer = small_renderer()
    with pytest.raises(RenderWorkerError, match="rendering in the worker failed"):
        pool.render(renderer, torch.zeros(2, spec.D + 3))  # the wrong number of coefficients
    assert np.array_equal(pool.render(renderer, motion(0)), renderer.frames(motion(0)))


class Lethal(torch.nn.Module):
    """A renderer whose every call kills the process rendering it."""

    size = 8

    def frames(self, coeffs, out=None):
        os._exit(3)


def test_a_killed_worker_is_replaced_and_the_call_made_again(caplog):
    """The streams go on after a worker dies: the call in flight is made again in a new worker (rendering has
    no state); a call that kills the new one too fails with the worker named."""
    renderer, pool = small_renderer(), RenderPool(1)
    try:
        pool.render(renderer, motion(0))
        dead = pool._all[0].process.pid
        os.kill(dead, signal.SIGKILL)
        assert np.array_equal(pool.render(renderer, motion(1)), renderer.frames(motion(1)))
        assert pool._all[0].process.pid != dead
        assert f"pid {dead}" in caplog.text
        with pytest.raises(RenderWorkerError, match=r"pid \d+\) stopped answering.*exit code 3"):
            pool.render(Lethal(), motion(0))
        assert np.array_equal(pool.render(renderer, motion(2)), renderer.frames(motion(2)))  # and it goes on
    finally:
        pool.close()
        pool.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        pool.render(renderer, motion(0))


class Hung(torch.nn.Module):
    """A renderer whose every call hangs the process rendering it."""

    size = 8

    def frames(self, coeffs, out=None):
        time.sleep(3600)


@pytest.mark.slow  # the call and its retry each wait out their timeouts: ~15 s
def test_a_hung_worker_is_replaced_and_its_call_fails_in_time(monkeypatch):
    """A worker that stops answering is killed and replaced, as a dead one is: callers wait a bounded time."""
    import engine.render.pool as pool_module

    monkeypatch.setattr(pool_module, "CALL_TIMEOUT_S", 1.0)
    monkeypatch.setattr(pool_module, "START_TIMEOUT_S", 12.0)  # a new worker's imports (~2 s), then the hang
    renderer, pool = small_renderer(), RenderPool(1)
    try:
        pool.warm(renderer)
        started = time.monotonic()
        with pytest.raises(RenderWorkerError, match="no answer in"):
            pool.render(Hung(), motion(0))
        assert time.monotonic() - started < 30
        assert np.array_equal(pool.render(renderer, motion(1)), renderer.frames(motion(1)))
    finally:
        pool.close()


def test_a_collected_renderer_is_dropped_by_the_workers(pool):
    """A server drops avatars it no longer serves: the workers' copies go with the next call."""
    base = small_renderer()
    other = copy.copy(base)  # a second avatar, without building one
    pool.render(other, motion(0))
    held = {k for w in pool._all for k in w.known}
    key = pool._keys[other]
    assert key in held
    del other
    gc.collect()
    assert all(key not in w.known for w in pool._all)
    assert any(key in w.dropped for w in pool._all)
    pool.render(base, motion(0))  # carries the drop to a worker
    pool.render(base, motion(0))


def test_batched_renderer_batches_through_the_pool(pool):
    """BatchedRenderer with a pool: a lane a worker, and the sessions' frames are their own."""
    renderer = small_renderer()
    batched = BatchedRenderer(renderer, pool=pool)
    assert batched._combiner.lanes == pool.workers
    coeffs = [motion(i) for i in range(4)]
    got = {}
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, batched.frames(coeffs[i]))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in range(4):
        assert np.array_equal(got[i], renderer.frames(coeffs[i])), i
    assert batched.frames_out == 8
