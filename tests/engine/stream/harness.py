"""A small harness for session tests: the real renderer at its smallest size, test audio, and a driver
loop that pulls frames on a simulated clock while a producer pushes audio in step with it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import lru_cache

import numpy as np

from engine.assets import DEFAULT_PORTRAIT
from engine.face.analysis import analyze_portrait
from engine.face.rig import Rig
from engine.motion import spec
from engine.render.renderer import Renderer
from engine.stream import LiveFrame, Session, SimulatedClock
from engine.timebase import SAMPLE_RATE

JAW = spec.index("jawOpen")


@lru_cache(maxsize=1)
def small_renderer() -> Renderer:
    """The bundled portrait's renderer at 128 px (~2 s to build once, ~1 ms a frame): the real one, small."""
    return Renderer(Rig(analyze_portrait(DEFAULT_PORTRAIT, size=128))).eval()


def speechlike(seconds: float, seed: int = 0, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Loud noise bursts at a syllable rate of 4 Hz: opens the baseline's jaw, varies the features."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2
    return (0.3 * envelope * rng.standard_normal(len(t))).astype(np.float32)


async def collect(session: Session, frames: int, producer: Callable[[float], None] | None = None,
                  on_frame: Callable[[LiveFrame], None] | None = None) -> list[tuple[LiveFrame, float]]:
    """Pull `frames` frames; before each pull, `producer(t)` pushes the audio that has arrived by the
    coming slot t; `on_frame(frame)` runs after each. Returns (frame, clock time at release) pairs."""
    out = []
    stream = session.frames()
    try:
        while len(out) < frames:
            if producer is not None:
                producer(session.slot(out[-1][0].pts + 1) if out else session.clock.now() + session.preset.headroom_s)
            frame = await anext(stream)
            out.append((frame, session.clock.now()))
            if on_frame is not None:
                on_frame(frame)
    finally:
        await stream.aclose()
    return out


def run(session: Session, frames: int, **kwargs) -> list[tuple[LiveFrame, float]]:
    assert isinstance(session.clock, SimulatedClock), "tests pace on a simulated clock"
    return asyncio.run(collect(session, frames, **kwargs))


def motion_of(pairs: list[tuple[LiveFrame, float]]) -> np.ndarray:
    return np.stack([f.motion for f, _ in pairs])


def program_audio(pairs: list[tuple[LiveFrame, float]]) -> np.ndarray:
    return np.concatenate([f.audio for f, _ in pairs])


class Producer:
    """Pushes `audio` in blocks of `block` samples at `rate`, each when its time has come on the
    session's clock: block k is due at start + k x block / rate. Call it with the coming slot."""

    def __init__(self, session: Session, audio: np.ndarray, start: float = 0.0, block: int = 320,
                 rate: int = SAMPLE_RATE):
        self.session, self.audio, self.start, self.block, self.rate = session, audio, start, block, rate
        self.pushed = 0  # blocks pushed
        self.arrivals: list[float] = []  # clock time of each push

    def __call__(self, until: float) -> None:
        while self.pushed * self.block < len(self.audio) and self.start + self.pushed * self.block / self.rate <= until:
            piece = self.audio[self.pushed * self.block : (self.pushed + 1) * self.block]
            self.session.push_audio(piece, sample_rate=self.rate)
            self.arrivals.append(self.session.clock.now())
            self.pushed += 1
