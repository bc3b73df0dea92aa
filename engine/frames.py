"""Typed frames that flow between pipeline stages.

Every data frame carries a pts in its stage's time base: audio in samples
(`AUDIO_TIME_BASE`), motion and video in video frames (`VIDEO_TIME_BASE`). pts derive from
sample counts, never from wall time, so audio and video cannot drift apart.
Control frames (`Control`, `Interrupt`, `EndOfStream`) carry no media and overtake data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from engine.timebase import AUDIO_TIME_BASE, VIDEO_TIME_BASE


@dataclass(frozen=True)
class AudioChunk:
    """Mono 16 kHz float32 samples starting at sample `pts`."""

    pts: int
    samples: np.ndarray  # (n,) float32 in [-1, 1]
    time_base: Fraction = AUDIO_TIME_BASE

    def __post_init__(self):
        if self.samples.ndim != 1 or self.samples.dtype != np.float32:
            raise ValueError(
                f"AudioChunk wants mono float32 samples, got shape {self.samples.shape} dtype {self.samples.dtype}; "
                "resample/downmix with engine.audio.io first"
            )

    @property
    def end(self) -> int:
        return self.pts + len(self.samples)


@dataclass(frozen=True)
class MotionChunk:
    """L frames of motion coefficients (see engine.motion.spec) starting at video frame `pts`."""

    pts: int
    coeffs: np.ndarray  # (L, D) float32, raw (un-normalized) units
    time_base: Fraction = VIDEO_TIME_BASE

    def __len__(self) -> int:
        return len(self.coeffs)


@dataclass(frozen=True)
class VideoFrame:
    """One RGB frame of the avatar at video frame `pts`."""

    pts: int
    image: np.ndarray  # (H, W, 3) uint8 RGB
    time_base: Fraction = VIDEO_TIME_BASE


@dataclass(frozen=True)
class LiveFrame(VideoFrame):
    """A live session's frame with what it was made from: its motion and the program audio it covers
    (the server sends that audio with the frame, so the voice stays in sync with the face)."""

    motion: np.ndarray | None = None  # (spec.D,) raw coefficients shown (for a data channel / 3D clients)
    audio: np.ndarray | None = None  # (SAMPLES_PER_FRAME,) float32 program audio of this frame (silence filled in)


@dataclass(frozen=True)
class Control:
    """Live controls; None leaves a setting unchanged."""

    emotion: str | None = None
    expressiveness: float | None = None
    head_motion: float | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Interrupt:
    """Barge-in: flush queued audio and motion, ease back to idle."""


@dataclass(frozen=True)
class EndOfStream:
    """No more input will come; flush what is pending."""
