"""Measure a face in a rendered frame the way a viewer would see it: from the pixels.

Used to check renders end to end (tests, benchmarks): FaceMesh runs on the output frame,
independently of the rig that made it.
"""

from __future__ import annotations

import numpy as np

from engine.face import topology as topo
from engine.face.analysis import detect_landmarks

_LIP_PAIRS = list(zip(topo.INNER_LIP_UPPER[3:8], topo.INNER_LIP_LOWER[3:8]))  # middle of the mouth
_EYE_PAIRS = list(zip(topo.EYE_LEFT_UPPER[2:7] + topo.EYE_RIGHT_UPPER[2:7],
                      topo.EYE_LEFT_LOWER[2:7] + topo.EYE_RIGHT_LOWER[2:7]))
_OUTER_LIPS = list(topo.OUTER_LIP_UPPER + topo.OUTER_LIP_LOWER)
MOUTH_BOX_MARGIN = 0.3  # of the mouth's width: the chin's and philtrum's motion count, the cheeks' hardly


def mouth_box(landmarks: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns of a frame around the outer lips of FaceMesh `landmarks` (a rig's points will do):
    the region whose pixel change the live tests and benchmarks read as the mouth moving."""
    lips = landmarks[_OUTER_LIPS, :2]
    (x0, y0), (x1, y1) = lips.min(0), lips.max(0)
    pad = MOUTH_BOX_MARGIN * (x1 - x0)
    return slice(int(y0 - pad), int(y1 + pad)), slice(int(x0 - pad), int(x1 + pad))


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
