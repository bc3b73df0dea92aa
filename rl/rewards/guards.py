"""Guards against reward hacking: a frozen face, a shaking face, a mouth stuck open.

Each guard measures one quantity against a threshold; past it the guard is `tripped` and costs its relative
excess ((x - limit) / limit, or (limit - x) / limit for the frozen face), so the penalty grows with the fault and
is 0 on healthy motion. Thresholds sit well outside the shipped drivers' values on the bundled speech (mouth
opening std in speech 0.16-0.22, head jitter 0.001-0.003 rad, opening in silence 0.01).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rl.rewards.base import Sample, TermResult, channels, mouth_opening
from rl.rewards.temporal import HEAD_ROTATION, jitter

MIN_SILENCE_FRAMES = 5  # fewer pause frames than this: judge a stuck mouth by the clip's most-closed frames
# A pause frame is silent and this many frames (0.2 s) from any speech frame: the VAD's onset trails the sound by
# a few frames, so the silent frames next to speech hold a mouth already opening for it (on a 1.1 s human
# recording, "ten of clubs", they averaged an opening of 0.14 for the pretrained live weights), not a stuck one
PAUSE_MARGIN_FRAMES = 5


@dataclass(frozen=True)
class GuardOptions:
    frozen_std: float = 0.03  # mouth opening std over speech frames below this: a frozen face
    shaking_jitter: float = 0.006  # rad: head rotation jitter above this: a shaking face
    stuck_open: float = 0.15  # mouth opening in pauses (or its 10th percentile) above this: stuck open

    def __post_init__(self):
        if min(self.frozen_std, self.shaking_jitter, self.stuck_open) <= 0:
            raise ValueError("guard thresholds must be > 0")


def pauses(sample: Sample) -> np.ndarray:
    """(T,) bool: silent frames at least PAUSE_MARGIN_FRAMES from any speech frame."""
    window = np.ones(2 * PAUSE_MARGIN_FRAMES + 1)
    return sample.silence & (np.convolve(sample.speech.astype(float), window, mode="same") == 0)


class GuardTerm:
    """Minus the summed relative excess of the tripped guards; `tripped` when any guard is."""

    name = "guards"
    needs_frames = False

    def __init__(self, options: GuardOptions = GuardOptions()):
        self.options = options

    def __call__(self, samples: Sequence[Sample]) -> TermResult:
        o = self.options
        measured = {"frozen": [], "shaking": [], "stuck_open": []}
        for s in samples:
            opening = mouth_opening(s.motion)
            speech = s.speech if s.speech.sum() >= 2 else np.ones(len(s), bool)
            measured["frozen"].append(opening[speech].std())
            measured["shaking"].append(jitter(channels(s.motion, HEAD_ROTATION)))
            silent = pauses(s)
            measured["stuck_open"].append(opening[silent].mean() if silent.sum() >= MIN_SILENCE_FRAMES
                                          else np.percentile(opening, 10))
        x = {k: np.array(v, np.float64) for k, v in measured.items()}
        excess = {
            "frozen": (o.frozen_std - x["frozen"]) / o.frozen_std,
            "shaking": (x["shaking"] - o.shaking_jitter) / o.shaking_jitter,
            "stuck_open": (x["stuck_open"] - o.stuck_open) / o.stuck_open,
        }
        penalty = {k: np.maximum(e, 0.0) for k, e in excess.items()}
        diagnostics = {}
        for k, e in excess.items():
            diagnostics[f"{k}_measure"] = x[k]
            diagnostics[f"{k}_tripped"] = (e > 0).astype(np.float64)
        tripped = np.any([excess[k] > 0 for k in excess], axis=0)
        return TermResult(-sum(penalty.values()), diagnostics, tripped)
