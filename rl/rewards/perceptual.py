"""Perceptual/identity regulariser: outside the mouth the rendered face stays the portrait's, its texture kept.

On rendered frames (T, H, W, 3), against a reference frame (the clip's first frame, or `reference="portrait"`:
the portrait's own framed image resized to the frames' size), over the face with the mouth region cut out (the
mask, from the portrait's FaceMesh landmarks scaled to the frames: the face oval, less the outer lips grown by
`mouth_margin` of the face width and reaching down to the chin, where the jaw moves). The head moves, so each
frame is first aligned to the reference by an affine ECC fit on the mask (cv2.findTransformECC, started from the
previous frame's fit): identity is judged after the pose is undone.
- ssim: mean SSIM (Gaussian window, sigma 1.5 px, on luma) of the aligned frame over the mask;
- l1: mean absolute difference in [0, 1], the same way;
- texture: band-pass energy (variance of a difference of Gaussians, sigma 1 and 3 px) of the frame on the mask
  carried to the frame's pose, over the reference's on the mask. Under 1 the face went blurry. (The finest
  scale, a Laplacian's, is not used: the renderer's own resampling halves it whenever the head moves.)
value = ssim - l1_weight * l1 - texture_weight * max(0, 1 - texture).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from engine.face import topology
from rl.rewards.base import Sample, TermResult, stack

SSIM_SIGMA = 1.5
TEXTURE_BAND = (1.0, 3.0)  # px: the difference of Gaussians whose energy is the texture
ECC_CRITERIA = (3, 50, 1e-5)  # cv2.TERM_CRITERIA_COUNT | EPS, iterations, epsilon
_C1, _C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


@dataclass(frozen=True)
class PerceptualOptions:
    reference: str = "first"  # "first": the clip's first frame; "portrait": the portrait's framed image
    mouth_margin: float = 0.12  # the cut-out around the lips, as a share of the face width
    l1_weight: float = 1.0
    texture_weight: float = 1.0
    frame_stride: int = 2  # score every this many frames (the ECC fit costs ~10 ms a frame at 128 px)

    def __post_init__(self):
        if self.frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1; got {self.frame_stride}")
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
    def blur(x):
        return cv2.GaussianBlur(x, (0, 0), SSIM_SIGMA)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + _C1) * (2 * cov + _C2)) / ((mu_a ** 2 + mu_b ** 2 + _C1) * (var_a + var_b + _C2))


def texture_energy(luma: np.ndarray, mask: np.ndarray) -> float:
    """Variance of the band-pass (difference of Gaussians) on the mask: the texture's energy."""
    fine, coarse = (cv2.GaussianBlur(luma, (0, 0), s) for s in TEXTURE_BAND)
    return float((fine - coarse)[mask].var())


def align(reference: np.ndarray, luma: np.ndarray, mask: np.ndarray, start: np.ndarray) -> np.ndarray | None:
    """(2, 3) affine taking reference pixels to `luma`'s (an ECC fit on the mask), or None if it failed."""
    try:
        _, warp = cv2.findTransformECC(reference, luma, start.copy(), cv2.MOTION_AFFINE, ECC_CRITERIA,
                                       mask.astype(np.uint8), 3)
    except cv2.error:  # did not converge (a frame too unlike the reference)
        return None
    return warp


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
        _, H, W, _ = frames.shape
        if H != W:
            raise ValueError(f"rendered frames must be square like the renderer's; got {H}x{W}")
        mask = face_mask(sample.portrait.landmarks, H, sample.portrait.size, o.mouth_margin)
        if o.reference == "first":
            reference = frames[0]
        else:
            reference = cv2.resize(sample.portrait.frame, (W, H), interpolation=cv2.INTER_AREA)
        ref = _luma(reference)
        ref_texture = max(texture_energy(ref, mask), 1e-6)
        ssim, l1, texture, failed = [], [], [], 0
        warp = np.eye(2, 3, dtype=np.float32)
        scored = frames[:: o.frame_stride]
        for frame in scored:
            luma = _luma(frame)
            fit = align(ref, luma, mask, warp)
            failed += fit is None
            warp = warp if fit is None else fit
            aligned = cv2.warpAffine(frame, warp, (W, H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                     borderMode=cv2.BORDER_REPLICATE)  # frame(warp x) at reference pixel x
            ssim.append(ssim_map(_luma(aligned), ref)[mask].mean())
            l1.append(np.abs(aligned.astype(np.float32) - reference)[mask].mean() / 255)
            moved = cv2.warpAffine(mask.astype(np.uint8), warp, (W, H), flags=cv2.INTER_NEAREST).astype(bool)
            texture.append(texture_energy(luma, moved) / ref_texture if moved.any() else 0.0)
        ssim_, l1_, texture_ = float(np.mean(ssim)), float(np.mean(l1)), float(np.mean(texture))
        value = ssim_ - o.l1_weight * l1_ - o.texture_weight * max(0.0, 1 - texture_)
        return {"value": value, "ssim": ssim_, "l1": l1_, "texture": texture_, "unaligned": failed / len(scored)}
