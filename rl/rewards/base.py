"""What every reward term sees and returns.

A rollout produces one `Sample` per generated clip; a term scores a batch of them at once (a batch may mix
prompts: G samples of several prompts) and returns a `TermResult`: one float per sample, higher is better, and
named per-sample diagnostics. Terms never normalise across the batch: GRPO's group normalisation does that.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

import numpy as np

from engine.audio.frontend import AudioFeatures
from engine.motion import spec
from engine.timebase import SAMPLE_RATE, frames_for_samples

if TYPE_CHECKING:
    from engine.face.analysis import Portrait
    from train.synth.phones import Phone

SPEECH_VAD = 0.5  # a frame is speech when the VAD's probability exceeds this (train.sync_expert's threshold)
SILENCE_VAD = 0.2  # and silence when it is below this


@dataclass(frozen=True, eq=False)
class Sample:
    """One rollout, as the rewards see it. The G samples of a prompt share portrait, audio, features and
    transcript (pass the same objects: per-prompt work such as forced alignment is cached on the audio's hash)."""

    audio: np.ndarray  # (N,) float32 mono at 16 kHz
    features: AudioFeatures  # engine.audio.frontend.extract_features(audio): T frames
    motion: np.ndarray  # (T, spec.D) raw coefficients (engine.motion.spec), what the generator produced
    portrait: Portrait | None = None  # the analysed portrait (its frame and landmarks), for pixel terms
    frames: np.ndarray | None = None  # (T, H, W, 3) uint8 RGB render of `motion` (small size), for pixel terms
    transcript: str | None = None  # what is said, when known (enables the forced-alignment term)
    phones: tuple[Phone, ...] | None = None  # the transcript's phones already aligned to the audio, if known
    target: np.ndarray | None = None  # (T, spec.D) the motion the audio was made with (synthetic corpus clips)

    def __post_init__(self):
        T = len(self.features)
        if np.shape(self.motion) != (T, spec.D):
            raise ValueError(f"motion must be ({T}, {spec.D}) raw coefficients, one row per frame of the audio "
                             f"features; got {np.shape(self.motion)}")
        if frames_for_samples(len(self.audio)) != T:
            raise ValueError(f"the audio has {len(self.audio)} samples ({frames_for_samples(len(self.audio))} "
                             f"frames at {SAMPLE_RATE} Hz) but the features cover {T} frames; pass "
                             "extract_features(audio) of this very audio")
        if self.target is not None and np.shape(self.target) != (T, spec.D):
            raise ValueError(f"target must be ({T}, {spec.D}) raw coefficients like motion; "
                             f"got {np.shape(self.target)}")
        if self.frames is not None and (self.frames.ndim != 4 or self.frames.shape[0] != T
                                        or self.frames.shape[3] != 3 or self.frames.dtype != np.uint8):
            raise ValueError(f"frames must be ({T}, H, W, 3) uint8 RGB, one per motion frame; got "
                             f"{self.frames.shape} {self.frames.dtype}")

    def __len__(self) -> int:
        return len(self.features)

    @cached_property
    def audio_key(self) -> str:
        """A hash of the audio and transcript: the key of per-prompt caches (alignment)."""
        h = hashlib.blake2b(np.ascontiguousarray(self.audio, np.float32).tobytes(), digest_size=16)
        h.update((self.transcript or "").encode())
        return h.hexdigest()

    @property
    def speech(self) -> np.ndarray:
        """(T,) bool: frames the VAD calls speech."""
        return self.features.vad > SPEECH_VAD

    @property
    def silence(self) -> np.ndarray:
        """(T,) bool: frames the VAD calls silence (the frames between SILENCE_VAD and SPEECH_VAD are neither)."""
        return self.features.vad < SILENCE_VAD


@dataclass(frozen=True)
class TermResult:
    """A term's verdict on a batch of B samples."""

    values: np.ndarray  # (B,) float64, higher is better
    diagnostics: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (B,) float64, for logging
    tripped: np.ndarray | None = None  # (B,) bool for guards: the sample hit a hacking pattern

    def __post_init__(self):
        B = len(self.values)
        for name, v in self.diagnostics.items():
            if np.shape(v) != (B,):
                raise ValueError(f"diagnostic {name!r} must have one value per sample ({B},); got {np.shape(v)}")


class RewardTerm(Protocol):
    """A reward term. `needs_frames`: it reads Sample.frames (the rollout must render them)."""

    name: str
    needs_frames: bool

    def __call__(self, samples: Sequence[Sample]) -> TermResult: ...


def stack(rows: Sequence[dict[str, float]]) -> dict[str, np.ndarray]:
    """Per-sample dicts of diagnostics -> one (B,) array per name."""
    return {k: np.array([r[k] for r in rows], np.float64) for k in rows[0]} if rows else {}


def channels(motion: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """(T, len(names)) of the named coefficients."""
    return np.asarray(motion)[:, [spec.index(n) for n in names]]


def mouth_opening(motion: np.ndarray) -> np.ndarray:
    """(T,) how far the lips part: jawOpen less mouthClose (ARKit: mouthClose shuts the lips on an open jaw)."""
    return np.clip(motion[:, spec.index("jawOpen")] - motion[:, spec.index("mouthClose")], 0.0, None)
