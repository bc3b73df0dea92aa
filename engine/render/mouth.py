"""The mouth interior: cavity, teeth and tongue painted where the lips part.

The target inner-lip contours are linear in the coefficients (`rest + coeffs @ basis`), so
the module holds those rows of the rig's basis. Inside a fixed region of interest around
the mouth, each column's upper and lower inner-lip heights come from piecewise-linear
interpolation over the ordered contour points; the opening is the pixel coverage between
them (zero where the lips touch). Everything is static-shape tensor arithmetic, traceable
and exportable; the lips themselves come from the warp.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.render.ops import contour_height, paste, smoothstep

# Palette (RGB in [0, 1]) before the portrait's light level is applied.
CAVITY_BACK = (0.10, 0.03, 0.03)
CAVITY_FRONT = (0.34, 0.13, 0.12)
TEETH_UPPER = (0.87, 0.83, 0.76)
TEETH_LOWER = (0.72, 0.68, 0.62)
TONGUE = (0.64, 0.29, 0.28)
TOOTH_EDGES = (0.0, 0.21, -0.21, 0.39, -0.39, 0.54, -0.54, 0.66, -0.66)  # incisor boundaries, fraction of half-width


class MouthInterior(nn.Module):
    """Composite cavity, teeth and tongue inside the target inner-lip contour."""

    def __init__(self, lip_rest: np.ndarray, lip_basis: np.ndarray, box: tuple[int, int, int, int], light: float):
        """lip_rest (2n, 2) and lip_basis (D, 2n, 2): the upper inner-lip contour (n points,
        image-left corner to image-right corner) then the lower one, in frame pixels.
        box: y0, y1, x0, x1 of the region of interest in frame pixels. light: brightness
        scale matching the portrait's exposure."""
        super().__init__()
        self.box = tuple(int(v) for v in box)
        self.n = len(lip_rest) // 2
        y0, y1, x0, x1 = self.box
        self.register_buffer("lip_rest", torch.as_tensor(lip_rest, dtype=torch.float32).reshape(1, -1))
        self.register_buffer("lip_basis", torch.as_tensor(lip_basis, dtype=torch.float32).reshape(len(lip_basis), -1))
        self.register_buffer("xs", torch.arange(x0, x1, dtype=torch.float32))
        self.register_buffer("ys", torch.arange(y0, y1, dtype=torch.float32).view(1, 1, -1, 1))
        palette = torch.tensor([CAVITY_BACK, CAVITY_FRONT, TONGUE, TEETH_LOWER, TEETH_UPPER])
        palette = palette * min(light, 1 / float(palette.max()))  # never brighter than white
        self.register_buffer("palette", palette.T.contiguous().view(3, 5, 1, 1))  # a 1x1 convolution: layers -> RGB
        self.register_buffer("tooth_edges", torch.tensor(TOOTH_EDGES).view(1, -1, 1, 1))

    def contours(self, coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n, 2) upper and lower target inner-lip contours for (B, D) raw coefficients."""
        lips = (self.lip_rest + coeffs @ self.lip_basis).view(-1, 2 * self.n, 2)
        return lips[:, : self.n], lips[:, self.n :]

    def opening(self, coeffs: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w) fraction of each ROI pixel between the parted lips."""
        return self._geometry(coeffs, self.xs, self.ys)[0]

    def window(self, coeffs: torch.Tensor) -> tuple[int, int, int, int] | None:
        """y0, y1, x0, x1 (frame pixels, within the ROI) outside which no frame of `coeffs` shows
        any interior, or None where the lips touch in every frame. Painting just this window
        changes exactly the pixels a whole-ROI paint does (every term is per pixel), so the
        eager CPU path (Renderer.frames) paints a thin band instead of the whole ROI; the
        exported graph keeps the static ROI."""
        y_up, k_up, in_up, y_lo, k_lo, in_lo = self._heights(*self.contours(coeffs), self.xs)  # (B, w): cheap
        # a pixel is covered only where both contours span its column, the lips part, and it
        # lies within half a pixel (measured across the edge's slope) of the gap
        open_ = (y_lo > y_up) & (in_up * in_lo > 0)
        if not bool(open_.any()):
            return None
        cols = torch.nonzero(open_.any(0)).flatten()
        top = float((y_up - 0.5 / k_up)[open_].min())
        bottom = float((y_lo + 0.5 / k_lo)[open_].max())
        y0, y1, x0, _ = self.box
        y0, y1 = max(y0, math.floor(top) - 1), min(y1, math.ceil(bottom) + 2)
        return (y0, y1, x0 + int(cols[0]), x0 + int(cols[-1]) + 1) if y0 < y1 else None  # None: all outside the ROI

    @staticmethod
    def _heights(upper: torch.Tensor, lower: torch.Tensor, xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per column xs, (B, w) each: the upper lip's height, slope factor and span, then the lower lip's
        (one contour_height call for both: the contours have the same number of points)."""
        b, heights = len(upper), contour_height(torch.cat([upper, lower]), xs)
        return (*(v[:b] for v in heights), *(v[b:] for v in heights))

    def _geometry(self, coeffs: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor):
        upper, lower = self.contours(coeffs)
        y_up, k_up, in_up, y_lo, k_lo, in_lo = (v[:, None, None, :] for v in self._heights(upper, lower, xs))
        y = ys  # (1, 1, h, 1)
        # Coverage of a pixel by the opening: distance to each lip edge (box-filtered, so a thin
        # gap gives a faint line and touching lips nothing).
        inside = torch.minimum((y - y_up) * k_up, (y_lo - y) * k_lo) + 0.5
        cover = torch.minimum(inside, y_lo - y_up).clamp(0.0, 1.0) * in_up * in_lo
        left, right = upper[:, 0, 0], upper[:, -1, 0]  # mouth corners (B,)
        centre = ((left + right) / 2).view(-1, 1, 1, 1)
        half = ((right - left) / 2).clamp(min=1.0).view(-1, 1, 1, 1)
        return cover, y_up, y_lo, centre, half

    def paint(self, coeffs: torch.Tensor, window: tuple[int, int, int, int] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, h, w) interior colour premultiplied by coverage, and (B, 1, h, w) coverage, over the
        ROI (or a `window` of it: y0, y1, x0, x1 in frame pixels).

        Each layer (cavity back and front, tongue, lower teeth, upper teeth) gets a scalar
        weight per pixel (shading included); one 1x1 convolution with the palette turns the
        weights into colour, so the per-pixel work is mostly single-channel.
        """
        xs, ys = self.xs, self.ys
        if window is not None:
            y0, _, x0, _ = self.box
            xs, ys = xs[window[2] - x0:window[3] - x0], ys[:, :, window[0] - y0:window[1] - y0]
        cover, y_up, y_lo, centre, half = self._geometry(coeffs, xs, ys)
        width = 2 * half
        x, y = xs.view(1, 1, 1, -1), ys
        u = (x - centre) / half  # -1 .. 1 from corner to corner; (B, 1, 1, w) like every x-only term
        u2 = u * u
        gap = (y_lo - y_up).clamp(min=0.0)
        below_upper, above_lower = y - y_up, y_lo - y

        # Faint gaps between teeth (incisor boundaries, closer together as the arch turns away).
        edges = torch.exp(-(((x - centre - self.tooth_edges * half) / 1.1) ** 2)).sum(1, keepdim=True).clamp(max=1.0)

        # Upper teeth: a band hanging from the upper lip, shaded as the arch curves away, with
        # the lip's shadow at the top, a greyer biting edge notched between teeth.
        height_up = 0.095 * width * (1 - 0.35 * u2) * (1 - 0.1 * edges)
        a_up = (height_up - below_upper + 0.5).clamp(0.0, 1.0) * smoothstep((0.8 - u.abs()) / 0.2)
        depth = (below_upper / height_up.clamp(min=1.0)).clamp(0.0, 1.0)
        shade_up = (1 - 0.6 * u2) * (1 - 0.1 * edges) * (0.6 + 0.4 * smoothstep(below_upper / (0.03 * width + 0.5)))
        shade_up = shade_up * (1 - 0.15 * smoothstep((depth - 0.6) / 0.4))

        # Lower teeth: a short band resting on the lower lip, showing only as the jaw drops.
        height_lo = torch.minimum(0.04 * width, 0.16 * gap) * (1 - 0.5 * u2) * (1 - 0.15 * edges)
        a_lo = (height_lo - above_lower + 0.5).clamp(0.0, 1.0) * smoothstep((0.5 - u.abs()) / 0.15)
        shade_lo = (1 - 0.5 * u2) * (1 - 0.1 * edges) * (0.75 + 0.25 * smoothstep(above_lower / (height_lo + 0.5)))

        # Tongue: an arch low in the opening, darker toward the back.
        top = y_lo - gap * (0.45 - 0.3 * u2)
        a_tongue = 0.9 * (y - top + 0.5).clamp(0.0, 1.0) * smoothstep((0.8 - u.abs()) / 0.25)
        shade_tongue = (0.55 + 0.45 * smoothstep((y - top) / (0.25 * gap + 1.0))) * (1 - 0.3 * u2)

        # Cavity: lit inner lips fading into a dark throat; shadowed corners.
        near_lip = torch.exp(-torch.minimum(below_upper, above_lower).clamp(min=0.0) / (0.035 * width))
        lit = (0.25 + 0.75 * near_lip) * (1 - 0.6 * u2)
        dark = 1 - 0.4 * u2 * u2

        # Front-to-back compositing: upper teeth over lower teeth over tongue over cavity.
        w_up = a_up * cover
        rest = cover - w_up
        w_lo = a_lo * rest
        rest = rest - w_lo
        w_tongue = a_tongue * rest
        rest = (rest - w_tongue) * dark
        layers = [rest * (1 - lit), rest * lit, w_tongue * shade_tongue, w_lo * shade_lo, w_up * shade_up]
        weights = torch.cat(layers, 1)
        return F.conv2d(weights, self.palette), cover

    def forward(self, canvas: torch.Tensor, coeffs: torch.Tensor, origin: tuple[int, int] = (0, 0),
                window: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """Composite the interior into `canvas` (B, 3, h, w), a crop of the frames whose top-left
        pixel is `origin` (y, x) in the frame, for (B, D) coefficients; only over `window` (see
        `window`) if given."""
        y0, y1, x0, x1 = self.box if window is None else window
        y0, y1, x0, x1 = y0 - origin[0], y1 - origin[0], x0 - origin[1], x1 - origin[1]
        colour, cover = self.paint(coeffs, window)
        return paste(canvas, canvas[:, :, y0:y1, x0:x1] * (1 - cover) + colour, y0, x0)
