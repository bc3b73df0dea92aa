"""Motion drivers as streams: features of L + K frames in, L frames of motion out, controls live.

Both drivers of engine.motion already stream; this module gives them one interface for the session:
- `LearnedStream`: the flow-matching generator chunk by chunk (its L and K come from the network's
  MotionConfig), blinks from `Blinks` on the VAD, expressiveness and head motion applied as
  LearnedDriver applies them. Steps over a stream give exactly what LearnedDriver.drive gives over
  the same features (pinned by a test in tests/engine/stream/test_session.py).
- `BaselineStream`: the signal-processing baseline, which needs no lookahead (K = 0) and takes any L.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from engine.audio.frontend import AudioFeatures
from engine.backends import ChunkStep
from engine.motion.baseline import BaselineDriver, BaselineOptions
from engine.motion.learned import LearnedDriver, LearnedOptions, guidance_of


@dataclass(frozen=True)
class Controls:
    """What a viewer may change live (engine.frames.Control carries changes to it)."""

    emotion: str = "neutral"  # one of engine.motion.baseline.EMOTIONS
    expressiveness: float = 1.0  # scales face motion and the emotion's offsets (0 = still face, max 2)
    head_motion: float = 1.0  # scales head rotation and sway (0 = still head, max 3)

    def __post_init__(self):
        BaselineOptions(self.emotion, self.expressiveness, self.head_motion)  # the drivers' checks (UserError)


class MotionStream(Protocol):
    chunk: int  # L: frames of motion per step
    lookahead: int  # K: frames of features a step reads beyond its chunk

    def step(self, features: AudioFeatures) -> np.ndarray:
        """Features of L + K frames -> (L, spec.D) raw motion of the first L."""

    def set_controls(self, controls: Controls) -> None:
        """Applies from the next step."""

    def reset(self) -> None:
        """Start a new stream: every state at rest, random streams re-seeded."""

    def interrupt(self) -> None:
        """The audio was cut off (barge-in): what follows is silence; settle toward rest from here."""


class LearnedStream:
    def __init__(self, step: ChunkStep, controls: Controls, steps: int, seed: int = 0):
        self.chunk, self.lookahead = step.config.chunk, step.config.lookahead
        options = LearnedOptions(**vars(controls), steps=steps, seed=seed, **guidance_of(step.sampler))
        self._driver = LearnedDriver(step, options)

    def reset(self) -> None:
        self._driver.reset()

    def interrupt(self) -> None:
        """Keeps the KV cache and statistics: fed silence after speech, the shipped model closes the mouth
        within ~5 frames and idles calmly, while from an empty cache its idle twitches."""

    def set_controls(self, controls: Controls) -> None:
        self._driver.set_options(replace(self._driver.options, **vars(controls)))

    def step(self, features: AudioFeatures) -> np.ndarray:
        return self._driver.step(features)


class BaselineStream:
    lookahead = 0

    def __init__(self, controls: Controls, chunk: int, seed: int = 0):
        self.chunk = chunk
        self._driver = BaselineDriver(BaselineOptions(**vars(controls), seed=seed))

    def reset(self) -> None:
        self._driver.reset()

    def interrupt(self) -> None:
        """A fresh stream: its jaw releases at 40% a frame (still ~0.05 open after 5 frames), a reset
        closes it at once, and the session's cross-fade supplies the easing."""
        self._driver.reset()

    def set_controls(self, controls: Controls) -> None:
        self._driver.set_options(BaselineOptions(**vars(controls)))  # the emotion eases in; the seed is kept

    def step(self, features: AudioFeatures) -> np.ndarray:
        return self._driver.step(features)


def motion_stream(step: ChunkStep | None, controls: Controls, steps: int, baseline_chunk: int,
                  seed: int = 0) -> MotionStream:
    """The learned driver over a backend's chunk `step`, or the baseline driver when `step` is None."""
    if step is None:
        return BaselineStream(controls, baseline_chunk, seed)
    return LearnedStream(step, controls, steps, seed)
