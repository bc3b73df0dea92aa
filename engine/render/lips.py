"""The portrait's own lips, measured once per avatar (numpy + cv2): the mouth's palette, and a clean
closed lip line in the rest image.

A photo taken mid-word or smiling shows parted lips; the rig's rest pose closes them
(engine.face.rig) and `warp.rest_image` squeezes the gap shut, but what the gap held (the dark
mouth corners, the edge of the teeth) leaves dark slivers along the closed line, and the squeeze
folds a few mesh triangles near the corners into a short tear. `clean_lip_line` repaints that band:
dark pixels are inpainted from the lips and skin around them, the tear beyond the corners is
smoothed across, and a soft seam is drawn where real closed lips meet. Photos whose lips were
already closed are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

LUMA = np.array([0.299, 0.587, 0.114], np.float32)
OPEN_PHOTO_GAP = 2.0  # px: a photo whose lips parted less than this keeps its own lip line
BAND = 0.018  # half-height of the repainted band around the closed lip line, in face widths
CORNER_REACH = 0.1  # how far beyond each mouth corner the band reaches, in face widths
DARK = 0.8  # a band pixel darker than this fraction of the lips' (or skin's) brightness is repainted
SEAM = 0.4  # how much darker than the lips the closed seam is, at the centre
FALLBACK_LIPS, FALLBACK_SKIN = (0.72, 0.45, 0.45), (0.8, 0.65, 0.55)  # RGB where too little of either is seen


@dataclass(frozen=True)
class LipColours:
    """RGB (0..1) measured on the rest image: the lips and the skin around the face."""

    lips: np.ndarray
    skin: np.ndarray

    @classmethod
    def of(cls, image: np.ndarray, rig) -> LipColours:
        g = rig.groups
        pts = np.asarray(rig.points)
        if "outer_lip_upper" not in g:  # a rig without lips (synthetic, in tests): typical colours
            return cls(lips=np.array(FALLBACK_LIPS, np.float32), skin=np.array(FALLBACK_SKIN, np.float32))
        lips = _mask(image.shape[0], pts[g["outer_lip_upper"]], pts[g["outer_lip_lower"]][::-1])
        lips &= ~_line_mask(image.shape[0], pts[g["inner_lip_upper"]], 2)  # the seam is not the lip colour
        face = _mask(image.shape[0], pts[g["face_oval"]])
        face &= ~cv2.dilate(lips.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
        return cls(lips=_typical(image, lips, (30, 85), fallback=FALLBACK_LIPS),
                   skin=_typical(image, face, (40, 80), fallback=FALLBACK_SKIN))


def clean_lip_line(image: np.ndarray, rig, colours: LipColours) -> np.ndarray:
    """The rest image (S, S, 3) uint8 with the closed lip line repainted (see the module docstring);
    unchanged when the photo's lips were closed."""
    up, lo = rig.groups["inner_lip_upper"], rig.groups["inner_lip_lower"]
    source = getattr(rig, "source_points", None)
    if source is None or (np.asarray(source)[lo, 1] - np.asarray(source)[up, 1]).max() < OPEN_PHOTO_GAP:
        return image
    size, width = image.shape[0], float(rig.face_width)
    line = np.asarray(rig.points, np.float64)[up]  # the closed lip line, corner to corner
    reach = CORNER_REACH * width
    ends = [line[0] + reach * _unit(line[0] - line[1]), line[-1] + reach * _unit(line[-1] - line[-2])]
    path = np.concatenate([ends[:1], line, ends[1:]])
    band = _line_mask(size, path, max(round(BAND * width), 1))
    beyond = band & ~_between(size, line[0, 0], line[-1, 0])  # past the corners: skin, where the tear is

    out = image.astype(np.float32)
    luma = out @ LUMA / 255
    floor = DARK * min(float(colours.lips @ LUMA), float(colours.skin @ LUMA))
    dark = band & (luma < floor)
    dark = band & cv2.dilate(dark.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)  # and their fringe
    if dark.any():
        out = cv2.inpaint(image, dark.astype(np.uint8), 3, cv2.INPAINT_TELEA).astype(np.float32)
    # Smooth the tear beyond the corners across the line (vertical blur), fading in over a few pixels.
    soft = cv2.GaussianBlur(beyond.astype(np.float32), (0, 0), 1.5)[..., None]
    out = out * (1 - soft) + cv2.GaussianBlur(out, (1, 0), sigmaX=0.1, sigmaY=2.0) * soft
    # The seam where closed lips meet: a soft dark line, strongest at the centre, gone at the corners.
    seam = np.zeros((size, size), np.float32)
    cv2.polylines(seam, [np.round(line * 16).astype(np.int32)], False, 1.0, 1, cv2.LINE_AA, shift=4)
    t = np.clip(1 - ((np.arange(size) - line[:, 0].mean()) / (0.5 * np.ptp(line[:, 0]))) ** 2, 0, 1)
    seam = cv2.GaussianBlur(seam, (0, 0), 0.6) * (SEAM * np.sqrt(t))[None, :]
    out = out * (1 - seam[..., None]) + (out * 0.45) * seam[..., None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _typical(image: np.ndarray, mask: np.ndarray, percentiles: tuple[float, float], fallback) -> np.ndarray:
    """Mean RGB (0..1) of the masked pixels whose brightness lies between the two percentiles."""
    pixels = image[mask].astype(np.float32) / 255
    if len(pixels) < 10:
        return np.asarray(fallback, np.float32)
    luma = pixels @ LUMA
    lo, hi = np.percentile(luma, percentiles)
    return pixels[(luma >= lo) & (luma <= hi)].mean(0)


def _mask(size: int, *contours: np.ndarray) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(np.concatenate(contours) * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _line_mask(size: int, path: np.ndarray, half: int) -> np.ndarray:
    """Pixels within `half` px of the polyline `path` (N, 2)."""
    mask = np.zeros((size, size), np.uint8)
    cv2.polylines(mask, [np.round(path * 16).astype(np.int32)], False, 1, 2 * half + 1, cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _between(size: int, x0: float, x1: float) -> np.ndarray:
    """Pixels whose column lies between x0 and x1."""
    xs = np.arange(size)
    return np.broadcast_to(((xs >= min(x0, x1)) & (xs <= max(x0, x1)))[None, :], (size, size))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)
