"""Target statistics: the sample moves the way its clip's own corpus target moves (synthetic corpus prompts only).

A synthetic corpus clip carries the motion its audio was made with. Frame-by-frame distance to it would reward the
mean for what audio does not decide (the head: a sample that sways where the target sways the other way scores
worse than one that stays still), so the term compares *statistics*, each a log-ratio that costs as much for too
little as for too much, which no single direction of change can game:
- head: the std of yaw, pitch and roll, smoothed by a SWAY_SIGMA-frame Gaussian, against the target's (a head that
  barely moves, or swings, both cost; smoothed so that a tremor cannot pass for sway);
- head jitter (rl.rewards.temporal.jitter: what that smoothing removes) above the target's (only the excess);
- mouth roughness (the opening's, rl.rewards.temporal.roughness) against the target's: the popping mouth;
- articulation: the std of the opening, funnel and pucker against the target's (under- or over-articulated lips);
- closure: on frames where the target's lips are shut during speech (p/b/m and the like), the sample's opening;
- tracking: Pearson r of the opening with the target's (what audio does decide), added, not a ratio.

value = tracking - head_weight head - jitter_weight jitter - roughness_weight roughness
        - articulation_weight articulation - closure_weight closure
Samples without a target score 0 and count in the diagnostic `has_target`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

from rl.rewards.base import Sample, TermResult, channels, mouth_opening
from rl.rewards.temporal import HEAD_ROTATION, jitter, roughness

ARTICULATION = ("mouthFunnel", "mouthPucker")
SHUT = 0.05  # target opening below this, in speech, is a lip closure
SWAY_SIGMA = 2.0  # frames: the head's sway is what survives this Gaussian
JITTER_FLOOR = 5e-4  # rad: the target jitter never counts as less than this (a still target's jitter is ~0)


@dataclass(frozen=True)
class TargetOptions:
    head_weight: float = 1.0
    jitter_weight: float = 2.0
    roughness_weight: float = 1.0
    articulation_weight: float = 0.5
    closure_weight: float = 2.0  # per unit of mean opening on closure frames (open vowels are ~0.3-0.5)
    std_floor: float = 2e-3  # added to both stds of a ratio: a near-still channel's ratio is noise, not signal

    def __post_init__(self):
        if self.std_floor <= 0:
            raise ValueError("std_floor must be > 0")


def log_ratio(a: float, b: float, floor: float) -> float:
    """|log((a + floor) / (b + floor))|: 0 when a == b, the same cost for half as for double."""
    return abs(float(np.log((a + floor) / (b + floor))))


class TargetTerm:
    """The sample's motion statistics against its clip's target (see the module docstring)."""

    name = "target"
    needs_frames = False

    def __init__(self, options: TargetOptions = TargetOptions()):
        self.options = options

    def __call__(self, samples: Sequence[Sample]) -> TermResult:
        rows = [self._one(s) for s in samples]
        values = np.array([r.pop("value") for r in rows])
        return TermResult(values, {k: np.array([r.get(k, np.nan) for r in rows]) for k in _DIAGNOSTICS})

    def _one(self, sample: Sample) -> dict[str, float]:
        if sample.target is None:
            return {"value": 0.0, "has_target": 0.0}
        o, m, t = self.options, np.asarray(sample.motion, np.float64), np.asarray(sample.target, np.float64)
        head_m, head_t = channels(m, HEAD_ROTATION), channels(t, HEAD_ROTATION)
        sway_m, sway_t = (gaussian_filter1d(h, SWAY_SIGMA, axis=0, mode="nearest").std(0) for h in (head_m, head_t))
        head = np.mean([log_ratio(a, b, o.std_floor) for a, b in zip(sway_m, sway_t)])
        jit = max(0.0, float(np.log(max(jitter(head_m), 1e-12) / max(jitter(head_t), JITTER_FLOOR))))
        open_m, open_t = mouth_opening(m), mouth_opening(t)
        rough = log_ratio(roughness(open_m), roughness(open_t), 1e-3) if open_t.std() > o.std_floor else 0.0
        artic = np.mean([log_ratio(open_m.std(), open_t.std(), o.std_floor)]
                        + [log_ratio(a, b, o.std_floor)
                           for a, b in zip(channels(m, ARTICULATION).std(0), channels(t, ARTICULATION).std(0))])
        shut = (open_t < SHUT) & sample.speech
        closure = float(open_m[shut].mean()) if shut.sum() >= 2 else 0.0
        track = (float(np.corrcoef(open_m, open_t)[0, 1]) if min(open_m.std(), open_t.std()) > 1e-6 else 0.0)
        value = (track - o.head_weight * head - o.jitter_weight * jit - o.roughness_weight * rough
                 - o.articulation_weight * artic - o.closure_weight * closure)
        return {"value": value, "has_target": 1.0, "head_std_logratio": head, "yaw_std": float(head_m[:, 0].std()),
                "target_yaw_std": float(head_t[:, 0].std()), "jitter_excess": jit, "roughness_logratio": rough,
                "articulation_logratio": float(artic), "closure_opening": closure, "tracking_r": track}


_DIAGNOSTICS = ("has_target", "head_std_logratio", "yaw_std", "target_yaw_std", "jitter_excess",
                "roughness_logratio", "articulation_logratio", "closure_opening", "tracking_r")
