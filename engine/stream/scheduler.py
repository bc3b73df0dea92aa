"""The chunk scheduler: one stream's compute, from timeline samples to rendered frames.

The timeline is the stream's program audio: every sample the face is animated from, in order,
at SAMPLE_RATE; video frame n shows samples [n x SAMPLES_PER_FRAME, (n + 1) x SAMPLES_PER_FRAME).
Samples enter it with `feed` (the producer's audio, or silence where it had none in time); once
the next chunk's L frames and its K lookahead frames have features (`samples_needed() == 0`),
`step` runs the motion driver and `render` turns the chunk into frames whose pts is the frame
index on the timeline, never wall time.

A segment is a stretch of the timeline run by one frontend stream. The stream's start opens one
(`start`), and so does an interrupt (`interrupt`): the new segment starts at the next frame the
viewer will see, the driver is told the audio was cut off, and the segment's first EASE_FRAMES
frames cross-fade from the motion last shown to the driver's (now silent) motion, so the face
eases back to rest within 200 ms instead of jumping.

Not thread-safe: the session's worker thread owns it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from engine.audio.frontend import LOOKAHEAD_SAMPLES, AudioFeatures, AudioFrontend
from engine.frames import LiveFrame
from engine.stream.drivers import MotionStream
from engine.timebase import FPS, SAMPLES_PER_FRAME, checked_div

INTERRUPT_EASE_MS = 200  # an interrupt brings the face back to rest within this
EASE_FRAMES = checked_div(INTERRUPT_EASE_MS * FPS, 1000)  # 5 frames


@dataclass(frozen=True)
class Chunk:
    pts: int  # video frame of the first of its L frames
    motion: np.ndarray  # (L, D) raw coefficients
    audio: np.ndarray  # (L, SAMPLES_PER_FRAME) float32 program audio
    arrivals: list[float | None]  # per frame: when its first sample reached the session (None: silence filled in)


class ChunkScheduler:
    def __init__(self, driver: MotionStream, renderer: torch.nn.Module, render_batch: int, with_vad: bool = True):
        self.driver = driver
        self.renderer = renderer
        self.render_batch = max(1, min(render_batch, driver.chunk))
        self.frontend = AudioFrontend(with_vad=with_vad)
        self.start(0)

    def start(self, frame: int = 0) -> None:
        """Open a segment at video frame `frame` with every state fresh (the stream's start)."""
        self.driver.reset()
        self._open(frame, None)

    def interrupt(self, frame: int, shown: np.ndarray | None) -> None:
        """Open a segment at video frame `frame` after a barge-in: the frontend starts afresh, the driver
        settles from where it was (MotionStream.interrupt), and with `shown` (D,) (the motion last shown)
        the first EASE_FRAMES frames cross-fade from it, so the face never jumps and is at the driver's
        idle within 200 ms."""
        self.driver.interrupt()
        self._open(frame, shown)

    def _open(self, frame: int, ease_from: np.ndarray | None) -> None:
        self.frontend.reset()
        self.segment_start = frame  # first video frame of the segment
        self.next_frame = frame  # first video frame of the next chunk
        self._fed = 0  # samples fed in this segment
        self._features = AudioFeatures.empty()  # features of frames next_frame, next_frame + 1, ...
        self._audio = np.zeros(0, np.float32)  # program audio from next_frame's first sample on
        self._arrivals: deque[tuple[int, float | None]] = deque()  # (segment sample where a fed run ends, arrival)
        self._ease_from = None if ease_from is None else np.asarray(ease_from, np.float32)

    def samples_needed(self) -> int:
        """Samples still to feed before the next chunk and its lookahead have features."""
        ahead = self.next_frame - self.segment_start + self.driver.chunk + self.driver.lookahead  # frames to have
        return max(ahead * SAMPLES_PER_FRAME + LOOKAHEAD_SAMPLES - self._fed, 0)

    @property
    def idle(self) -> bool:
        """Whether the timeline ends in silence filled in (or nothing yet), not in the producer's audio."""
        return not self._arrivals or self._arrivals[-1][1] is None

    def feed(self, samples: np.ndarray, arrival: float | None) -> None:
        """Append (n,) float32 samples to the timeline; `arrival` is when they reached the session
        (None for silence filled in)."""
        self.feed_all([(samples, arrival)])

    def feed_all(self, runs: list[tuple[np.ndarray, float | None]]) -> None:
        """Append several (samples, arrival) runs, as `feed` does one by one, in one push through the
        frontend: a chunk's 20 ms packets pushed one at a time cost 1.8 ms against 1.2 for one push (the same
        features, to float rounding)."""
        runs = [(samples, arrival) for samples, arrival in runs if len(samples)]
        if not runs:
            return
        samples = np.concatenate([samples for samples, _ in runs]) if len(runs) > 1 else runs[0][0]
        self._features = AudioFeatures.concat([self._features, self.frontend.push(samples)])
        self._audio = np.concatenate([self._audio, samples])
        for piece, arrival in runs:
            self._fed += len(piece)
            self._arrivals.append((self._fed, arrival))

    def step(self) -> Chunk:
        """The next chunk's motion (needs samples_needed() == 0)."""
        L, K = self.driver.chunk, self.driver.lookahead
        if self.samples_needed() or len(self._features) < L + K:
            raise RuntimeError(f"step needs {self.samples_needed()} more samples: feed the timeline first")
        motion = self.driver.step(self._features[: L + K])
        self._features = self._features[L:]
        motion = self._ease(motion)
        first = (self.next_frame - self.segment_start) * SAMPLES_PER_FRAME  # segment sample of the chunk's start
        arrivals = [next(a for end, a in self._arrivals if end > first + i * SAMPLES_PER_FRAME) for i in range(L)]
        while self._arrivals and self._arrivals[0][0] <= first + L * SAMPLES_PER_FRAME:
            self._arrivals.popleft()
        audio = self._audio[: L * SAMPLES_PER_FRAME].reshape(L, SAMPLES_PER_FRAME)
        self._audio = self._audio[L * SAMPLES_PER_FRAME :]
        chunk = Chunk(self.next_frame, motion, audio, arrivals)
        self.next_frame += L
        return chunk

    def _ease(self, motion: np.ndarray) -> np.ndarray:
        """Cross-fade the segment's first EASE_FRAMES frames from the motion shown before it."""
        if self._ease_from is None:
            return motion
        k = np.arange(self.next_frame - self.segment_start, self.next_frame - self.segment_start + len(motion)) + 1
        w = np.clip(k / EASE_FRAMES, 0.0, 1.0)[:, None]
        w = w * w * (3 - 2 * w)  # smoothstep: leaves the old pose and lands on the new one gently
        eased = ((1 - w) * self._ease_from + w * motion).astype(np.float32)
        if k[-1] >= EASE_FRAMES:
            self._ease_from = None
        return eased

    @torch.inference_mode()
    def render(self, chunk: Chunk) -> Iterator[list[LiveFrame]]:
        """The chunk's frames, render_batch at a time (the caller may stop early, e.g. on an interrupt)."""
        for s in range(0, len(chunk.motion), self.render_batch):
            motion = chunk.motion[s : s + self.render_batch]
            images = self.renderer.frames(torch.from_numpy(np.ascontiguousarray(motion, np.float32)))
            yield [LiveFrame(chunk.pts + s + i, image, motion=motion[i], audio=chunk.audio[s + i])
                   for i, image in enumerate(images)]
