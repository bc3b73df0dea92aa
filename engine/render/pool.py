"""Frames rendered in worker processes, off the serving process's GIL.

On a CPU the renderer's warp is OpenCV, which runs free of the GIL, but its mouth and eyelid layers are
many small torch ops on small crops, and every op takes the GIL back: in one process two renders at once
make 1.3-1.5 renders' worth on the 2-core CPU (the mouth layer alone 0.9), and a render slows every other
session's work beside it (benchmarks/results/stage_overlap.md). A RenderPool keeps worker processes (one a
core by default), each holding the renderers it has been sent (pickled once a worker) and rendering into
shared memory: a call costs a socket message each way and one copy of its frames. BatchedRenderer
(engine.render.batching) runs its batches through one when given it, a lane a worker.

A worker is a fresh `python -c` importing only this module, not multiprocessing's spawn: spawn re-imports the
caller's main script, which a script serving without an `if __name__ == "__main__"` guard would run again
in every worker (a forked worker could deadlock on ONNX Runtime's and torch's threads instead).
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import queue
import socket
import subprocess
import sys
import threading
import weakref
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0  # a worker's first answer (it imports torch and OpenCV) comes within this
CALL_TIMEOUT_S = 30.0  # and every later one (a batch of 64 frames at 512 px takes under a second): else it hangs


class RenderWorkerError(RuntimeError):
    """A render worker failed a call: the renderer raised there, or two workers in turn died or hung on it."""


class _WorkerDied(RenderWorkerError):
    """The worker process died or stopped answering during a call; a new one has been started."""


class RenderPool:
    """`render(renderer, coeffs (B, D)) -> (B, S, S, 3) uint8`, `renderer.frames(coeffs)` made in a worker
    process; at most `workers` calls run at once (one a worker), from any threads."""

    def __init__(self, workers: int | None = None):
        from engine.batch import cores

        self.workers = workers if workers is not None else cores()
        if self.workers < 1:
            raise ValueError(f"a RenderPool needs at least 1 worker, got {self.workers}")
        self._keys: weakref.WeakKeyDictionary[torch.nn.Module, int] = weakref.WeakKeyDictionary()
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._all = [_Worker() for _ in range(self.workers)]  # started now: their imports overlap the caller's
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for worker in self._all:
            self._idle.put(worker)
        self._closed = False
        # unclosed, the workers stop and the buffers are unlinked when the pool is collected or at exit
        self._finalizer = weakref.finalize(self, _stop_all, self._all)

    def render(self, renderer: torch.nn.Module, coeffs: torch.Tensor) -> np.ndarray:
        """`renderer.frames(coeffs)` in the first free worker (waiting for one). A worker that dies on the call or
        stops answering (CALL_TIMEOUT_S) is replaced and the call made again once (rendering has no state), so the
        streams go on; RenderWorkerError if the renderer raises, or the new worker fails the call too."""
        if self._closed:
            raise RuntimeError("this RenderPool is closed; make a new one")
        key, coeffs = self._key(renderer), coeffs.detach().to("cpu", torch.float32).numpy()
        worker = self._idle.get()
        try:
            try:
                return worker.render(key, renderer, coeffs)
            except _WorkerDied as err:
                log.warning("%s; rendering the call again there", err)
                return worker.render(key, renderer, coeffs)
        finally:
            self._idle.put(worker)

    def warm(self, renderer: torch.nn.Module) -> None:
        """Have every worker started and holding `renderer` (one frame each, every coefficient 0), so the first
        sessions' first frames do not wait for a worker's imports."""
        dims = int(renderer.expr_index.numel() + renderer.head_index.numel())
        key, rest = self._key(renderer), np.zeros((1, dims), np.float32)
        workers = [self._idle.get() for _ in self._all]
        try:
            for worker in workers:
                worker.render(key, renderer, rest)
        finally:
            for worker in workers:
                self._idle.put(worker)

    def cpu_seconds(self) -> float:
        """CPU time the workers have used (user + system), for benchmarks' accounting."""
        return sum(worker.cpu_seconds() for worker in self._all)

    def close(self) -> None:
        """Stop the workers (calls under way finish first). Idempotent."""
        if self._closed:
            return
        self._closed = True
        for _ in self._all:
            self._idle.get()  # each worker's call under way ends first
        self._finalizer()

    def _key(self, renderer: torch.nn.Module) -> int:
        """The renderer's key in the workers; when it is collected, they drop their copies with their next call."""
        with self._lock:
            if renderer not in self._keys:
                key = self._keys[renderer] = next(self._ids)
                weakref.finalize(renderer, self._forget, key)
            return self._keys[renderer]

    def _forget(self, key: int) -> None:
        for worker in self._all:
            worker.forget(key)


class _Worker:
    """One render process, its socket and its shared frame buffer (the parent makes, grows and unlinks it)."""

    def __init__(self):
        self.buffer: SharedMemory | None = None
        self._lock = threading.Lock()  # `known` and `dropped`: a collected renderer is forgotten from any thread
        self._spawn()

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair()
        root = str(Path(__file__).resolve().parents[2])  # where `engine` is imported from here, first there too
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from engine.render.pool import _main; _main()", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
        theirs.close()
        self.conn = Connection(ours.detach())
        self.conn.send(sys.path)  # what a renderer's pickle names must import as it does here
        self.known: set[int] = set()  # keys of the renderers it holds
        self.dropped: list[int] = []  # keys it may drop
        self.started = False  # it has answered once

    def render(self, key: int, renderer: torch.nn.Module, coeffs: np.ndarray) -> np.ndarray:
        shape = (len(coeffs), renderer.size, renderer.size, 3)
        need = int(np.prod(shape))
        if self.buffer is None or self.buffer.size < need:
            self._release_buffer()
            self.buffer = SharedMemory(create=True, size=max(need, 1))
        with self._lock:
            known, (dropped, self.dropped) = key in self.known, (self.dropped, [])
        payload = None if known else pickle.dumps(renderer, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.conn.send((key, payload, coeffs, self.buffer.name, dropped))
            timeout = CALL_TIMEOUT_S if self.started else START_TIMEOUT_S
            if not self.conn.poll(timeout):
                raise TimeoutError(f"no answer in {timeout:.0f} s")
            status, detail = self.conn.recv()
        except (EOFError, OSError, TimeoutError) as err:
            pid, code = self.process.pid, self._reap(1)
            self._restart()
            raise _WorkerDied(f"the render worker (pid {pid}) stopped answering ({str(err) or type(err).__name__}, "
                              f"exit code {code}); a new one has started") from None
        self.started = True
        if status != "ok":
            raise RenderWorkerError(f"rendering in the worker failed: {detail}")
        with self._lock:
            self.known.add(key)
        return np.ndarray(shape, np.uint8, buffer=self.buffer.buf).copy()

    def forget(self, key: int) -> None:
        with self._lock:
            if key in self.known:
                self.known.discard(key)
                self.dropped.append(key)

    def cpu_seconds(self) -> float:
        try:
            with open(f"/proc/{self.process.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        except (OSError, IndexError, ValueError):  # not Linux, or already gone
            return 0.0

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        if self._reap(5) is None:
            self.process.kill()
            self.process.wait()
        self.conn.close()
        self._release_buffer()

    def _reap(self, timeout: float) -> int | None:
        """The process's exit code, waiting up to `timeout` s for it to end (None if it has not)."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def _restart(self) -> None:
        self.process.kill()
        self.process.wait()
        self.conn.close()
        with self._lock:
            self._spawn()  # the buffer stays: the new process attaches to it by name

    def _release_buffer(self) -> None:
        if self.buffer is not None:
            self.buffer.close()
            self.buffer.unlink()
            self.buffer = None


def _stop_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.stop()


def _main() -> None:
    """A worker process's entry: serve the socket whose descriptor is the last argument, importing from the
    parent's sys.path (its first message)."""
    conn = Connection(int(sys.argv[-1]))
    sys.path[:] = conn.recv()
    _serve(conn)


def _serve(conn: Connection) -> None:
    """A worker's loop: (key, pickled renderer or None, coeffs, buffer name, keys to drop) in, frames into the
    named buffer, ("ok", None) or ("error", what) out; None or a closed pipe ends it."""
    from engine.runtime import set_threads

    set_threads(1)  # one core each: the pool has a worker a core
    renderers: dict[int, torch.nn.Module] = {}
    buffer: SharedMemory | None = None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        key, payload, coeffs, name, dropped = message
        for k in dropped:
            renderers.pop(k, None)
        try:
            if payload is not None:
                renderers[key] = pickle.loads(payload)
            if buffer is None or buffer.name != name:
                if buffer is not None:
                    buffer.close()
                buffer = SharedMemory(name=name)
                # the parent owns it: this process's own resource tracker must not unlink it when the worker ends
                resource_tracker.unregister(buffer._name, "shared_memory")
            renderer = renderers[key]
            out = np.ndarray((len(coeffs), renderer.size, renderer.size, 3), np.uint8, buffer=buffer.buf)
            with torch.inference_mode():
                renderer.frames(torch.from_numpy(coeffs), out=out)
            del out  # the buffer can close later only with no view left on it
            reply = ("ok", None)
        except Exception as err:  # the caller gets it; the worker goes on
            reply = ("error", f"{type(err).__name__}: {err}")
        conn.send(reply)
