"""Audio the Python client sends: a file (or silence) paced in real time, or a live microphone."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

PACKET_S = 0.02  # 20 ms packets, as a browser sends


def _frame(samples: np.ndarray, rate: int, pts: int) -> av.AudioFrame:
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)[None]
    frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = rate, pts, Fraction(1, rate)
    return frame


class FileAudioTrack(MediaStreamTrack):
    """Mono samples sent in real time, packet n at start + n x 20 ms (an absolute schedule: no drift),
    then `tail_s` of silence, then the track ends. `sent` records (wall time, samples) per packet."""

    kind = "audio"

    def __init__(self, samples: np.ndarray, rate: int, tail_s: float = 2.0):
        super().__init__()
        self.rate, self.packet = rate, round(rate * PACKET_S)
        self.samples = np.concatenate([samples.astype(np.float32), np.zeros(round(tail_s * rate), np.float32)])
        self.started: float | None = None
        self.sent = 0  # samples sent

    @property
    def done(self) -> bool:
        return self.sent >= len(self.samples)

    async def recv(self) -> av.AudioFrame:
        if self.done:
            self.stop()
            raise MediaStreamError
        if self.started is None:
            self.started = time.monotonic()
        delay = self.started + self.sent / self.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk = self.samples[self.sent: self.sent + self.packet]
        frame = _frame(np.pad(chunk, (0, self.packet - len(chunk))), self.rate, self.sent)
        self.sent += self.packet
        return frame


class MicAudioTrack(MediaStreamTrack):
    """Blocks from engine.audio.mic.Microphone (PortAudio's thread), re-timed on the event loop."""

    kind = "audio"

    def __init__(self, loop: asyncio.AbstractEventLoop, rate: int):
        super().__init__()
        self.rate, self._loop, self._queue, self._pts = rate, loop, asyncio.Queue(maxsize=50), 0

    def on_audio(self, samples: np.ndarray, rate: int) -> None:
        """The microphone's callback (any thread): queue the block, dropping it if the sender stalls."""
        def put():
            if not self._queue.full():
                self._queue.put_nowait(samples.copy())

        self._loop.call_soon_threadsafe(put)

    async def recv(self) -> av.AudioFrame:
        samples = await self._queue.get()
        frame = _frame(samples, self.rate, self._pts)
        self._pts += len(samples)
        return frame
