"""Eyelids: smooth lid skin where a lid has come down over the eye, and no eye at the seam.

The warp carries the lid's edge (lashes) down rigidly and stretches the skin above it; the
strip the lid sweeps over the eye would otherwise show that stretched texture (streaks from
the lashes and the crease). This layer repaints it half with the lid's own skin colour
(shaded toward the lashes) and half with the warp blurred along the lid (its shading without
the streaks); when the lids meet it darkens the seam where the lower lid's edge (often a
sliver of white) would show. The lid contours are linear in the coefficients,
so everything is static-shape tensor arithmetic over a fixed region around each eye.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.render.ops import contour_height, paste, smoothstep

LASH = 0.014  # height of the lash line at the lid's edge, in face widths
LID_BAND = (0.03, 0.10)  # where the lid skin colour is measured above the upper lid, in face widths
LOWER_BAND = (0.015, 0.04)  # and the lower lid's below the lower lid
LASH_BAND = (0.0, 0.015)  # and the lashes' colour, right above the upper lid
FADE = 5.0  # px over which the painted lid fades in below its rest position
OPACITY = 0.85  # how much of the swept strip becomes painted skin (the warp's texture shows through)
SEAM_OPACITY, LASH_OPACITY = 0.9, 0.35  # the closed seam's cover, the lash line's
UNSEEN = 0.25 / 255  # a lid changing no pixel by more than this (a quarter grey level) is left out
BLUR = 4  # px: half-width of the horizontal blur that removes the stretched lid's vertical streaks


def band_colour(image: np.ndarray, contour: np.ndarray, band: tuple[float, float], face_width: float,
                above: bool, percentile: float = 50) -> np.ndarray:
    """RGB (0..1) of the pixel at `percentile` of brightness in a band parallel to `contour`,
    above or below it (50: the median skin; high: skin rather than crease or brow; low: lashes)."""
    size = image.shape[0]
    samples = []
    for frac in np.linspace(*band, 6):
        offset = (-1 if above else 1) * frac * face_width
        for x, y in contour[2:-2]:  # skip the corners, where skin and eye mix
            yi, xi = int(round(y + offset)), int(round(x))
            if 0 <= yi < size and 0 <= xi < size:
                samples.append(image[yi, xi])
    if not samples:
        return np.full(3, 0.7, np.float32)
    samples = np.array(samples, np.float32) / 255
    luma = samples @ np.array([0.299, 0.587, 0.114], np.float32)
    order = np.argsort(luma)
    pick = order[int(round(percentile / 100 * (len(order) - 1)))]
    near = np.abs(luma - luma[pick]) <= 0.03  # average pixels of about that brightness
    return samples[near].mean(0)


def _blur_rows(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Box blur along x (a sum of shifted slices: several times faster than avg_pool2d on CPU)."""
    width = x.shape[-1]
    padded = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    total = padded[..., :width]
    for i in range(1, 2 * radius + 1):
        total = total + padded[..., i : i + width]
    return total / (2 * radius + 1)


class Eyelid(nn.Module):
    """Paint one eye's swept lid strip and closed seam, inside a fixed box of the frame."""

    def __init__(self, rest: np.ndarray, basis: np.ndarray, head_mask: np.ndarray, box: tuple[int, int, int, int],
                 lid_colour: np.ndarray, lash_colour: np.ndarray, lower_colour: np.ndarray, face_width: float):
        """rest (2n, 2) and basis (D, 2n, 2): the upper lid contour (corner to corner, image
        left to right) then the lower one, in frame pixels. head_mask (D,): 1 for head pose.
        box: y0, y1, x0, x1 in frame pixels."""
        super().__init__()
        self.box, self.n = tuple(int(v) for v in box), len(rest) // 2
        y0, y1, x0, x1 = self.box
        self.lash = float(LASH * face_width)
        self.register_buffer("rest", torch.as_tensor(rest, dtype=torch.float32).reshape(1, -1))
        self.register_buffer("basis", torch.as_tensor(basis, dtype=torch.float32).reshape(len(basis), -1))
        self.register_buffer("head_mask", torch.as_tensor(head_mask, dtype=torch.float32)[None])
        self.register_buffer("xs", torch.arange(x0, x1, dtype=torch.float32))
        self.register_buffer("ys", torch.arange(y0, y1, dtype=torch.float32).view(1, 1, -1, 1))
        seam = 0.5 * (np.asarray(lower_colour) + np.asarray(lash_colour))
        palette = torch.as_tensor(np.stack([lid_colour, seam, lash_colour]), dtype=torch.float32)  # (3 layers, RGB)
        self.register_buffer("palette", palette.T.contiguous().view(3, 3, 1, 1))  # a 1x1 convolution: layers -> RGB

    def _lids(self, coeffs: torch.Tensor, lower: bool = True):
        """Per column: upper lid height, slope factor and span, then the lower lid's (if `lower`)."""
        points = (self.rest + coeffs @ self.basis).view(-1, 2 * self.n, 2)
        heights = contour_height(points[:, : self.n], self.xs)
        if lower:
            heights += contour_height(points[:, self.n :], self.xs)
        return [v[:, None, None, :] for v in heights]  # each (B, 1, 1, w)

    def visible(self, coeffs: torch.Tensor) -> bool:
        """Whether this lid changes any pixel of any frame of `coeffs` by more than UNSEEN. Every
        layer's weight is at most smoothstep(moved / 3 lash) and a pixel moves by at most twice
        their sum, so a lid within a hair of its open position leaves the eye as the warp drew
        it; the eager CPU path (Renderer.frames) skips such a lid (4 frames in 5 of speech)."""
        both = self._lids(torch.cat([coeffs, coeffs * self.head_mask]), lower=False)[0]  # posed, then lids at rest
        y_up, y_open = both[: len(coeffs)], both[len(coeffs):]
        weight = smoothstep((y_up - y_open).clamp(min=0.0).max() / (3 * self.lash))
        return bool(2 * (OPACITY + SEAM_OPACITY + LASH_OPACITY) * weight > UNSEEN)

    def forward(self, canvas: torch.Tensor, coeffs: torch.Tensor, origin: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """Composite into `canvas` (B, 3, h, w), a crop of the frames whose top-left is `origin` (y, x)."""
        y_up, _, in_up, y_lo, _, in_lo = self._lids(coeffs)
        y_open = self._lids(coeffs * self.head_mask, lower=False)[0]  # where the upper lid would be, lids at rest
        y = self.ys
        # The strip the upper lid swept over the eye: lid skin fading in below the lid's rest
        # position, a lash line at its edge, darker toward the lashes.
        moved = (y_up - y_open).clamp(min=0.0)
        strip = (torch.minimum((y - y_open) / FADE, y_up - y + 0.5).clamp(0.0, 1.0) * in_up
                 * smoothstep(moved / (3 * self.lash)))  # fades out toward the corners, which stay
        lashes = ((y - (y_up - self.lash) + 0.5).clamp(0.0, 1.0) * strip)
        shade = 0.82 + 0.18 * smoothstep((y_up - self.lash - y) / (3 * self.lash))
        # Where the lids meet: the lower lid's edge (often a sliver of white), covered with its skin.
        closed = (1 - (y_lo - y_up) / 2).clamp(0.0, 1.0) * smoothstep(moved / (3 * self.lash))
        seam = (torch.minimum(y - y_lo + 1.0, y_lo + 2.5 - y) + 0.5).clamp(0.0, 1.0) * closed * in_lo

        y0, y1, x0, x1 = self.box
        y0, y1, x0, x1 = y0 - origin[0], y1 - origin[0], x0 - origin[1], x1 - origin[1]
        roi = canvas[:, :, y0:y1, x0:x1]
        smooth = _blur_rows(roi, BLUR)
        # Layers, back to front: the lid (half its skin colour, half the warp blurred along the
        # lid: its shading without the streaks), the seam, the lash line; as per-pixel weights.
        a_strip, a_seam, a_lash = OPACITY * strip, SEAM_OPACITY * seam, LASH_OPACITY * lashes
        over_lid = (1 - a_seam) * (1 - a_lash)
        k_smooth = 0.5 * a_strip * over_lid
        weights = torch.cat([k_smooth * shade, a_seam * (1 - a_lash), a_lash], 1)  # lid colour, seam, lashes
        roi = roi * ((1 - a_strip) * over_lid) + smooth * k_smooth + F.conv2d(weights, self.palette)
        return paste(canvas, roi, y0, x0)
