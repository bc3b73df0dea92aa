"""Perceptual/identity regulariser: outside the mouth the rendered face stays the portrait's, its texture kept.

On rendered frames (T, H, W, 3), against a reference frame (the clip's first frame, or `reference="portrait"`:
the portrait's own framed image resized to the frames' size), over the face with the mouth region cut out (both
from the portrait's FaceMesh landmarks, scaled to the frames: the face oval, less the outer lips grown by
`mouth_margin` of the face width and reaching down to the chin, where the jaw moves):
- ssim: mean SSIM (Gaussian window, sigma 1.5 px, on luma) over that mask;
- l1: mean absolute difference in [0, 1];
- texture: high-frequency energy (variance of the Laplacian) of the frame over the reference's, on the mask;
  under 1 means the face went blurry.
value = ssim - l1_weight * l1 - texture_weight * max(0, 1 - texture). A moving head lowers SSIM against a still
reference too; keep the weight modest, or pass a reference render of the same head pose.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from engine.face import topology
from rl.rewards.base import Sample, TermResult, stack

SSIM_SIGMA = 1.5
_C1, _C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


@dataclass(frozen=True)
class PerceptualOptions:
    reference: str = "first"  # "first": the clip's first frame; "portrait": the portrait's framed image
    mouth_margin: float = 0.12  # the cut-out around the lips, as a share of the face width
    l1_weight: float = 1.0
    texture_weight: float = 1.0

    def __post_init__(self):
        if self.reference not in ("first", "portrait"):
            raise ValueError(f"reference must be 'first' or 'portrait'; got {self.reference!r}")


def face_mask(landmarks: np.ndarray, size: int, portrait_size: int, mouth_margin: float) -> np.ndarray:
    """(size, size) bool: inside the face oval, outside the mouth region. landmarks: (478, >=2) portrait pixels."""
    pts = np.asarray(landmarks)[:, :2] * (size / portrait_size)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(pts[list(topology.FACE_OVAL)]).astype(np.int32)], 1)
    lips = pts[list(topology.OUTER_LIP_UPPER + topology.OUTER_LIP_LOWER)]
    margin = mouth_margin * np.linalg.norm(pts[topology.CHEEK_LEFT] - pts[topology.CHEEK_RIGHT])
    x0, y0 = lips.min(0) - margin
    x1 = lips[:, 0].max() + margin
    y1 = max(lips[:, 1].max() + margin, pts[topology.CHIN, 1] + margin)  # the jaw drops down to the chin
    mask[max(int(y0), 0): int(np.ceil(y1)), max(int(x0), 0): int(np.ceil(x1))] = 0
    return mask.astype(bool)


def _luma(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM of two float32 luma images (Gaussian window)."""
    blur = lambda x: cv2.GaussianBlur(x, (0, 0), SSIM_SIGMA)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + _C1) * (2 * cov + _C2)) / ((mu_a ** 2 + mu_b ** 2 + _C1) * (var_a + var_b + _C2))


def high_frequency(luma: np.ndarray, mask: np.ndarray) -> float:
    """Variance of the Laplacian on the mask: the texture's energy."""
    return float(cv2.Laplacian(luma, cv2.CV_32F)[mask].var())


class PerceptualTerm:
    """ssim - l1_weight * l1 - texture_weight * texture loss, outside the mouth (needs frames and the portrait)."""

    name = "perceptual"
    needs_frames = True

    def __init__(self, options: PerceptualOptions = PerceptualOptions()):
        self.options = options

    def __call__(self, samples: Sequence[Sample]) -> TermResult:
        rows = [self._one(s) for s in samples]
        return TermResult(np.array([r.pop("value") for r in rows]), stack(rows))

    def _one(self, sample: Sample) -> dict[str, float]:
        if sample.frames is None or sample.portrait is None:
            raise ValueError("the perceptual term needs each sample's rendered frames and its portrait; render the "
                             "rollouts (rl.rollout) or drop [perceptual] from the reward config")
        o, frames = self.options, sample.frames
        T, H, W, _ = frames.shape
        if H != W:
            raise ValueError(f"rendered frames must be square like the renderer's; got {H}x{W}")
        mask = face_mask(sample.portrait.landmarks, H, sample.portrait.size, o.mouth_margin)
        if o.reference == "first":
            reference = frames[0]
        else:
            reference = cv2.resize(sample.portrait.frame, (W, H), interpolation=cv2.INTER_AREA)
        ref = _luma(reference)
        ref_hf = max(high_frequency(ref, mask), 1e-6)
        ssim, l1, texture = [], [], []
        for frame in frames:
            luma = _luma(frame)
            ssim.append(ssim_map(luma, ref)[mask].mean())
            l1.append(np.abs(frame.astype(np.float32) - reference)[mask].mean() / 255)
            texture.append(high_frequency(luma, mask) / ref_hf)
        ssim_, l1_, texture_ = float(np.mean(ssim)), float(np.mean(l1)), float(np.mean(texture))
        value = ssim_ - o.l1_weight * l1_ - o.texture_weight * max(0.0, 1 - texture_)
        return {"value": value, "ssim": ssim_, "l1": l1_, "texture": texture_}
