"""A real AvatarServer on a background event loop, for tests that connect real clients to it."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request

import numpy as np

from engine.server.app import AvatarServer, ServerConfig, backend_of, configure
from engine.stream import Session


class ServerThread:
    """Starts `AvatarServer(config, broadcast)` on its own loop; `call(coro)` runs on that loop."""

    def __init__(self, config: ServerConfig, broadcast: Session | None = None):
        import cv2
        import torch

        self._threads = torch.get_num_threads(), cv2.getNumThreads()
        configure(config, 1)  # as `avatar serve` runs its session workers (restored by close())
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self.call(self._start(config, broadcast))

    @staticmethod
    async def _start(config, broadcast):
        from engine.backends.registry import StepRegistry
        from export.runtime import prepare

        server = AvatarServer(config, broadcast, StepRegistry(backend_of(config), config.device, 1, prepare))
        await server.start()
        return server

    def call(self, coroutine, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/ws"

    def health(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.server.port}/health", timeout=10) as reply:
            return json.loads(reply.read())

    def close(self) -> None:
        self.call(self.server.close())
        self.server.models.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        import cv2
        import torch

        torch.set_num_threads(self._threads[0])
        cv2.setNumThreads(self._threads[1])


def mouth_box(size: int) -> tuple[slice, slice]:
    """Rows and columns of the bundled portrait's mouth in a `size` px frame."""
    from engine.assets import DEFAULT_PORTRAIT
    from engine.face.analysis import analyze_portrait
    from engine.face.measure import mouth_box as box

    return box(analyze_portrait(DEFAULT_PORTRAIT, size=size).landmarks)


class MouthMotion:
    """Collects per-frame mouth-region change of received frames: `on_video` for run_client."""

    def __init__(self, size: int):
        self.rows, self.cols = mouth_box(size)
        self.times, self.change = [], []
        self._last = None

    def on_video(self, frame, arrival: float) -> None:
        crop = frame.to_ndarray(format="gray")[self.rows, self.cols].astype(np.float32)
        if self._last is not None:
            self.times.append(arrival)
            self.change.append(float(np.abs(crop - self._last).mean()))
        self._last = crop

    def between(self, start: float, end: float, origin: float | None = None) -> float:
        """Median mouth change over frames arriving in [start, end) seconds after `origin` (a
        time.monotonic() reading; the first frame's arrival by default)."""
        t = np.array(self.times) - (self.times[0] if origin is None else origin)
        picked = np.array(self.change)[(t >= start) & (t < end)]
        return float(np.median(picked)) if len(picked) else float("nan")
