"""Measure a face in a rendered frame the way a viewer would see it: from the pixels.

Used to check renders end to end (tests, benchmarks): FaceMesh runs on the output frame,
independently of the rig that made it.
"""

from __future__ import annotations

import numpy as np

from engine.face import topology as topo
from engine.face.analysis import detect_landmarks

_LIP_PAIRS = list(zip(topo.INNER_LIP_UPPER[3:8], topo.INNER_LIP_LOWER[3:8]))  # middle of the mouth
_EYE_PAIRS = list(zip(topo.EYE_LEFT_UPPER[2:7] + topo.EYE_RIGHT_UPPER[2:7], topo.EYE_LEFT_LOWER[2:7] + topo.EYE_RIGHT_LOWER[2:7]))


def face_openings(frame: np.ndarray) -> tuple[float, float]:
    """(mouth, eyes) opening of the largest face in an RGB frame, as inner-lip and eyelid gaps
    divided by the face width; (nan, nan) when no face is found."""
    faces = detect_landmarks(frame)
    if not faces:
        return np.nan, np.nan
    lm = max(faces, key=lambda f: np.ptp(f[:, 0]))
    width = np.linalg.norm(lm[topo.CHEEK_LEFT, :2] - lm[topo.CHEEK_RIGHT, :2])
    mouth = np.mean([lm[lo, 1] - lm[up, 1] for up, lo in _LIP_PAIRS]) / width
    eyes = np.mean([lm[lo, 1] - lm[up, 1] for up, lo in _EYE_PAIRS]) / width
    return float(mouth), float(eyes)


def frame_energy_db(samples: np.ndarray, frames: int, samples_per_frame: int) -> np.ndarray:
    """RMS level in dBFS of each video frame's audio samples (zero-padded at the end)."""
    padded = np.zeros(frames * samples_per_frame, np.float32)
    padded[: min(len(samples), len(padded))] = samples[: len(padded)]
    rms = np.sqrt((padded.reshape(frames, samples_per_frame) ** 2).mean(1))
    return 20 * np.log10(rms + 1e-5)
