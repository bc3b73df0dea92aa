"""Temporal regulariser: the mouth and head move as smoothly as speech does, and the pixels do not flicker.

Roughness (train.eval_video's measure: std of the second difference over the std) of the mouth opening is
compared with the speech's own: the reference opening of the sample's aligned phones where they are known, else
`mouth_reference_roughness` (measured on the bundled speech's reference). Head rotation's roughness is compared
with `head_reference_roughness`. Only the excess is penalised (smoother than speech is the guards' business:
a frozen face). Jitter, the RMS of what a 1.5-frame Gaussian removes, is logged in coefficient units. Flicker,
on rendered frames, is the roughness of the picture's coarse brightness (the luma of FLICKER_GRID x FLICKER_GRID
blocks, where moving edges average out): mean |second temporal difference| over mean |first difference|; 0.8 for
the baseline driver's motion rendered at 128 px, 1.5 for per-frame pixel noise, 2 for a frame-to-frame flip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

from rl.rewards.base import Sample, TermResult, channels, mouth_opening, stack

HEAD_ROTATION = ("headYaw", "headPitch", "headRoll")
STILL_HEAD = 1e-3  # rad: below this std the head's roughness is noise, not motion (the guards judge stillness)
JITTER_SIGMA = 1.5  # frames: the Gaussian whose residual is jitter
FLICKER_GRID = 16  # blocks per side whose mean luma flicker follows


def roughness(x: np.ndarray) -> float:
    """std of the second difference over the std (train.eval_video.roughness), of a (T,) track."""
    return float(np.std(np.diff(x, 2)) / max(np.std(x), 1e-9))


def jitter(x: np.ndarray) -> float:
    """RMS of what a JITTER_SIGMA-frame Gaussian removes from a (T,) or (T, C) track."""
    x = np.asarray(x, np.float64)
    return float(np.sqrt(np.mean((x - gaussian_filter1d(x, JITTER_SIGMA, axis=0, mode="nearest")) ** 2)))


def flicker(frames: np.ndarray) -> float:
    """(T, H, W, 3) uint8 -> mean |b[t+1] - 2 b[t] + b[t-1]| over mean |b[t+1] - b[t]| of the block means b
    (0 for a still video)."""
    T, H, W, _ = frames.shape
    gh, gw = min(FLICKER_GRID, H), min(FLICKER_GRID, W)
    luma = frames[:, : H - H % gh, : W - W % gw].astype(np.float32).mean(-1)
    x = luma.reshape(T, gh, luma.shape[1] // gh, gw, luma.shape[2] // gw).mean((2, 4))  # (T, gh, gw)
    first = np.abs(np.diff(x, axis=0)).mean()
    return float(np.abs(np.diff(x, 2, axis=0)).mean() / first) if first > 1e-6 else 0.0


@dataclass(frozen=True)
class TemporalOptions:
    mouth_reference_roughness: float = 0.64  # the bundled speech's reference opening (train.eval_video)
    head_reference_roughness: float = 0.3  # head rotation as smooth as a slow sway
    head_weight: float = 0.5  # weight of the head's excess roughness against the mouth's
    flicker_weight: float = 0.5  # weight of the pixels' flicker (rendered frames only)
    flicker_tolerance: float = 1.2  # flicker below this costs nothing

    def __post_init__(self):
        if min(self.mouth_reference_roughness, self.head_reference_roughness) <= 0:
            raise ValueError("the reference roughnesses must be > 0")


class TemporalTerm:
    """-(excess mouth roughness) - head_weight (excess head roughness) - flicker_weight (excess flicker)."""

    name = "temporal"
    needs_frames = False  # flicker is added where frames are present

    def __init__(self, options: TemporalOptions = TemporalOptions()):
        self.options = options

    def __call__(self, samples: Sequence[Sample]) -> TermResult:
        rows = [self._one(s) for s in samples]
        values = np.array([r.pop("value") for r in rows])
        return TermResult(values, stack(rows))

    def _one(self, sample: Sample) -> dict[str, float]:
        o = self.options
        opening = mouth_opening(sample.motion)
        reference = o.mouth_reference_roughness
        if sample.phones:
            from train.eval_video import reference_opening

            reference = roughness(reference_opening(sample.phones, len(sample)))
        mouth_ratio = roughness(opening) / reference
        head = channels(sample.motion, HEAD_ROTATION)
        moving = head.std(0) > STILL_HEAD
        head_ratio = (np.mean([roughness(h) for h in head.T[moving]]) / o.head_reference_roughness
                      if moving.any() else 0.0)
        flick = flicker(sample.frames) if sample.frames is not None else 0.0
        value = -(max(0.0, mouth_ratio - 1) + o.head_weight * max(0.0, head_ratio - 1)
                  + o.flicker_weight * max(0.0, flick - o.flicker_tolerance))
        return {"value": value, "mouth_roughness": mouth_ratio, "head_roughness": head_ratio,
                "mouth_jitter": jitter(opening), "head_jitter": jitter(head), "flicker": flick}
