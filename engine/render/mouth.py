"""The mouth interior: cavity, teeth, gums, tongue and a wet lip rim, painted where the lips part.

Geometry. The inner-lip contours are linear in the coefficients (`rest + coeffs @ basis`), and
so is a Catmull-Rom spline through them: the module keeps the basis of the spline's dense
points (SUBDIVIDE per landmark segment), so the smooth curves cost one matmul, never a polygon.
Per column of a fixed region of interest the upper and lower curves' heights come from
interpolating the dense points; a pixel's coverage is its box-filtered distance inside both
(anti-aliased), the two distances joined by a smooth minimum so the corners come to a rounded
point instead of a cut.

Shading. Each layer (cavity back and front, tongue, lower teeth, gums, upper teeth, the lip
rim's highlight) gets a scalar weight per pixel, shading included; one 1x1 convolution with
the palette turns them into colour, so the per-pixel work is single-channel. The palette is
taken from the portrait's own lips and skin (engine.render.lips), so the mouth fits any photo.
Everything is static-shape tensor arithmetic, traceable and exportable; the lips themselves
(their texture and thickness) come from the warp.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.render.lips import LipColours
from engine.render.ops import contour_height, paste, smoothstep

SUBDIVIDE = 4  # spline points per landmark segment
CORNER_ROUND = 1.5  # px: radius of the smooth minimum that rounds the opening's corners
# The layers, back to front, as the palette's rows: cavity back/front, tongue, lower teeth, gum, upper teeth, rim.
LAYERS = ("cavity_back", "cavity_front", "tongue", "teeth_lower", "gum", "teeth_upper", "rim")
TEETH = (0.93, 0.90, 0.83)  # enamel before the portrait's light and white balance
TONGUE = (0.80, 0.40, 0.40)  # blended half and half with the lips' colour
GUM = (0.78, 0.36, 0.40)
# Incisor boundaries (fraction of the half-width; closer together as the arch turns away) and
# each tooth's brightness offset, centre outward (incisors, laterals, canines, premolars).
TOOTH_EDGES = (0.0, 0.21, -0.21, 0.39, -0.39, 0.54, -0.54, 0.66, -0.66, 0.76, -0.76)
TOOTH_CENTRES = (0.105, -0.105, 0.30, -0.30, 0.465, -0.465, 0.60, -0.60, 0.71, -0.71)
TOOTH_TINT = (0.05, 0.03, -0.02, 0.0, -0.05, -0.07, -0.08, -0.06, -0.10, -0.11)
LOWER_TEETH_GAP = 0.16  # opening height / mouth width past which the lower teeth start to show
UPPER_TEETH = 0.095  # height of the upper incisors, in mouth widths
LOWER_TEETH = 0.055  # and of the lower ones, once fully shown
GUM_GAP = 0.2  # opening / width past which a thin band of gum shows above the upper teeth
RIM = 0.15  # brightness of the wet highlight along the lower lip's inner edge


def catmull_rom(n: int, k: int) -> np.ndarray:
    """(k (n - 1) + 1, n) weights of a uniform Catmull-Rom spline through n points, k samples per
    segment (ends extended linearly): dense = weights @ points."""
    out = np.zeros(((n - 1) * k + 1, n))
    for i in range(n - 1):
        for j in range(k):
            t = j / k
            w = 0.5 * np.array([-t**3 + 2 * t**2 - t, 3 * t**3 - 5 * t**2 + 2, -3 * t**3 + 4 * t**2 + t, t**3 - t**2])
            for idx, wi in zip((i - 1, i, i + 1, i + 2), w):
                if idx < 0:  # phantom point 2 P0 - P1
                    out[i * k + j, 0] += 2 * wi
                    out[i * k + j, 1] -= wi
                elif idx >= n:  # phantom point 2 P(n-1) - P(n-2)
                    out[i * k + j, n - 1] += 2 * wi
                    out[i * k + j, n - 2] -= wi
                else:
                    out[i * k + j, idx] += wi
    out[-1, -1] = 1.0
    return out


def palette(colours: LipColours, light: float) -> np.ndarray:
    """(len(LAYERS), 3) RGB in [0, 1] of each layer, from the portrait's lips and skin. `light`
    scales the teeth to the portrait's exposure; the skin's hue tints them a little (white balance)."""
    lips, skin = np.asarray(colours.lips, np.float64), np.asarray(colours.skin, np.float64)
    tint = (skin / max(float(skin.mean()), 1e-3)) ** 0.25
    teeth = np.asarray(TEETH) * light * tint
    rows = {
        "cavity_back": lips * 0.15, "cavity_front": lips * 0.5,
        "tongue": 0.5 * (lips + np.asarray(TONGUE) * light) * 0.92,
        "teeth_lower": 0.85 * teeth * 0.88 + 0.15 * lips * 0.8, "gum": 0.5 * (lips + np.asarray(GUM) * light) * 0.9,
        "teeth_upper": teeth, "rim": 0.35 * lips + 0.65,
    }
    return np.clip(np.stack([rows[name] for name in LAYERS]), 0.0, 1.0)


class MouthInterior(nn.Module):
    """Composite the interior inside the target inner-lip curves, and the wet rim just below them."""

    def __init__(self, lip_rest: np.ndarray, lip_basis: np.ndarray, box: tuple[int, int, int, int],
                 colours: np.ndarray):
        """lip_rest (2n, 2) and lip_basis (D, 2n, 2): the upper inner-lip contour (n points,
        image-left corner to image-right corner) then the lower one, in frame pixels.
        box: y0, y1, x0, x1 of the region of interest in frame pixels. colours: (len(LAYERS), 3)
        RGB of the layers (`palette`)."""
        super().__init__()
        n = len(lip_rest) // 2
        if len(lip_rest) != 2 * n or n < 2 or lip_basis.shape[1:] != lip_rest.shape:
            raise ValueError(f"lip_rest must be (2n, 2) with n >= 2 and lip_basis (D, 2n, 2), got {lip_rest.shape} "
                             f"and {lip_basis.shape}; pass the upper then the lower inner-lip contour")
        self.box = tuple(int(v) for v in box)
        spline = catmull_rom(n, SUBDIVIDE)
        self.m = len(spline)
        y0, y1, x0, x1 = self.box

        def dense(pts):  # (..., 2n, 2) landmarks -> (..., 2m, 2) spline points, upper then lower
            return np.concatenate([spline @ pts[..., :n, :], spline @ pts[..., n:, :]], -2)

        self.register_buffer("lip_rest", torch.as_tensor(dense(lip_rest), dtype=torch.float32).reshape(1, -1))
        self.register_buffer("lip_basis", torch.as_tensor(dense(lip_basis), dtype=torch.float32)
                             .reshape(len(lip_basis), -1))
        self.register_buffer("xs", torch.arange(x0, x1, dtype=torch.float32))
        self.register_buffer("ys", torch.arange(y0, y1, dtype=torch.float32).view(1, 1, -1, 1))
        colours = torch.as_tensor(np.asarray(colours), dtype=torch.float32)
        self.register_buffer("palette", colours.T.contiguous().view(3, len(LAYERS), 1, 1))  # 1x1 conv: layers -> RGB
        self.register_buffer("tooth_edges", torch.tensor(TOOTH_EDGES).view(1, -1, 1, 1))
        self.register_buffer("tooth_centres", torch.tensor(TOOTH_CENTRES).view(1, -1, 1, 1))
        self.register_buffer("tooth_tint", torch.tensor(TOOTH_TINT).view(1, -1, 1, 1))

    def contours(self, coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, m, 2) upper and lower inner-lip curves (dense spline points) for (B, D) raw coefficients."""
        lips = (self.lip_rest + coeffs @ self.lip_basis).view(-1, 2 * self.m, 2)
        return lips[:, : self.m], lips[:, self.m :]

    def opening(self, coeffs: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w) fraction of each ROI pixel between the parted lips."""
        return self._geometry(coeffs, self.xs, self.ys)[0]

    def window(self, coeffs: torch.Tensor) -> tuple[int, int, int, int] | None:
        """y0, y1, x0, x1 (frame pixels, within the ROI) outside which no frame of `coeffs` shows
        any interior or rim, or None where the lips touch in every frame. Painting just this window
        changes exactly the pixels a whole-ROI paint does (every term is per pixel), so the
        eager CPU path (Renderer.frames) paints a thin band instead of the whole ROI; the
        exported graph keeps the static ROI."""
        y_up, k_up, in_up, y_lo, _, in_lo = self._heights(*self.contours(coeffs), self.xs)  # (B, w): cheap
        # a pixel is covered only where both curves span its column and the lips part; it lies
        # within half a pixel (measured across the edge's slope) of the gap, or within the rim below
        open_ = (y_lo > y_up) & (in_up * in_lo > 0)
        if not bool(open_.any()):
            return None
        cols = torch.nonzero(open_.any(0)).flatten()
        top = float((y_up - 0.5 / k_up)[open_].min())
        bottom = float((y_lo + self._rim_reach(self._width(coeffs))).max())
        y0, y1, x0, _ = self.box
        y0, y1 = max(y0, math.floor(top) - 1), min(y1, math.ceil(bottom) + 2)
        return (y0, y1, x0 + int(cols[0]), x0 + int(cols[-1]) + 1) if y0 < y1 else None  # None: all outside the ROI

    @staticmethod
    def _heights(upper: torch.Tensor, lower: torch.Tensor, xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per column xs, (B, w) each: the upper curve's height, slope factor and span, then the lower
        curve's (one contour_height call for both: the curves have the same number of points)."""
        b, heights = len(upper), contour_height(torch.cat([upper, lower]), xs)
        return (*(v[:b] for v in heights), *(v[b:] for v in heights))

    def _width(self, coeffs: torch.Tensor) -> torch.Tensor:
        """(B, 1, 1, 1) corner-to-corner width of the mouth, px."""
        upper = self.contours(coeffs)[0]
        return (upper[:, -1, 0] - upper[:, 0, 0]).clamp(min=2.0).view(-1, 1, 1, 1)

    @staticmethod
    def _rim_reach(width: torch.Tensor) -> torch.Tensor:
        """How far below the lower lip's edge the rim's highlight reaches (px)."""
        return 0.03 * width + 2.0

    def _geometry(self, coeffs: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor):
        upper, lower = self.contours(coeffs)
        y_up, k_up, in_up, y_lo, k_lo, in_lo = (v[:, None, None, :] for v in self._heights(upper, lower, xs))
        y = ys  # (1, 1, h, 1)
        # Coverage of a pixel by the opening: distance inside each lip edge, joined by a smooth
        # minimum (rounds the corners), box-filtered; a thin gap gives a faint line, touching lips nothing.
        d_up, d_lo = (y - y_up) * k_up, (y_lo - y) * k_lo
        blend = (1 - (d_up - d_lo).abs() / CORNER_ROUND).clamp(min=0.0)
        inside = torch.minimum(d_up, d_lo) - 0.25 * CORNER_ROUND * blend * blend + 0.5
        cover = torch.minimum(inside, y_lo - y_up).clamp(0.0, 1.0) * in_up * in_lo
        left, right = upper[:, 0, 0], upper[:, -1, 0]  # mouth corners (B,)
        centre = ((left + right) / 2).view(-1, 1, 1, 1)
        half = ((right - left) / 2).clamp(min=1.0).view(-1, 1, 1, 1)
        return cover, y_up, y_lo, centre, half, in_up * in_lo

    def layers(self, coeffs: torch.Tensor, window: tuple[int, int, int, int] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, len(LAYERS), h, w) each layer's weight (coverage and shading in one; the palette
        turns them into colour) and (B, 1, h, w) how much of the pixel below they hide, over the
        ROI (or a `window` of it: y0, y1, x0, x1 in frame pixels)."""
        xs, ys = self.xs, self.ys
        if window is not None:
            y0, _, x0, _ = self.box
            xs, ys = xs[window[2] - x0:window[3] - x0], ys[:, :, window[0] - y0:window[1] - y0]
        cover, y_up, y_lo, centre, half, spans = self._geometry(coeffs, xs, ys)
        width = 2 * half
        x, y = xs.view(1, 1, 1, -1), ys
        u = (x - centre) / half  # -1 .. 1 from corner to corner; (B, 1, 1, w) like every x-only term
        u2 = u * u
        gap = (y_lo - y_up).clamp(min=0.0)
        below_upper, above_lower = y - y_up, y_lo - y
        rel = gap / width  # how far the mouth is open, per column

        # Teeth: gaps between them (closer together as the arch turns away) and a brightness per tooth.
        offset = x - centre
        edges = torch.exp(-(((offset - self.tooth_edges * half) / 1.1) ** 2)).sum(1, keepdim=True).clamp(max=1.0)
        tint = (torch.exp(-(((offset - self.tooth_centres * half) / (0.08 * half + 0.5)) ** 2)) * self.tooth_tint
                ).sum(1, keepdim=True)
        arch = smoothstep((0.9 - u.abs()) / 0.25)  # the teeth turn away out of sight toward the corners

        # Upper teeth under a gum line: a band hanging from the upper lip; the lip shades its top,
        # the biting edge is notched between teeth and greyer (translucent enamel).
        gum = GUM_GAP * 0.1 * width * smoothstep((rel - GUM_GAP) / 0.15) * (0.5 + 0.9 * edges)
        height_up = UPPER_TEETH * width * (1 - 0.35 * u2) * (1 - 0.12 * edges)
        # gum and teeth; a hairline gap shows the dark between the lips, not the teeth
        a_block = (gum + height_up - below_upper + 0.5).clamp(0.0, 1.0) * arch * smoothstep((gap - 1.0) / 2.5)
        a_gum = (gum - below_upper + 0.5).clamp(0.0, 1.0) * smoothstep(gum) * a_block
        depth = ((below_upper - gum) / height_up.clamp(min=1.0)).clamp(0.0, 1.0)  # 0 at the gum, 1 at the edge
        shade_up = ((1 - 0.45 * u2 + tint) * (1 - 0.22 * edges)
                    * (0.55 + 0.45 * smoothstep(below_upper / (0.035 * width + 0.5)))
                    * (1 - 0.18 * smoothstep((depth - 0.7) / 0.3)))

        # Lower teeth: only past a threshold of opening, rising from behind the lower lip.
        show = smoothstep((rel - LOWER_TEETH_GAP) / 0.12)
        height_lo = LOWER_TEETH * width * show * (1 - 0.5 * u2) * (1 - 0.15 * edges)
        a_lo = ((height_lo - above_lower + 0.5).clamp(0.0, 1.0) * smoothstep(height_lo)  # none at all below it
                * smoothstep((0.6 - u.abs()) / 0.2))
        shade_lo = (1 - 0.5 * u2 + tint) * (1 - 0.2 * edges) * (0.7 + 0.3 * smoothstep(above_lower / (height_lo + 0.5)))

        # Tongue: a dome low in the opening with a rounded tip, lit from the front (bright where it
        # comes toward the viewer, darker back over its top and at the sides).
        dome = (1 - (u / 0.78) ** 2).clamp(min=0.0) ** 0.5
        tongue_h = torch.minimum(0.5 * gap, 0.2 * width) * dome
        top = y_lo - tongue_h
        a_tongue = (y - top + 0.5).clamp(0.0, 1.0) * smoothstep(tongue_h / 1.5)
        into = ((y - top) / (tongue_h + 1.0)).clamp(0.0, 1.0)
        shade_tongue = (0.5 + 0.5 * smoothstep(into / 0.6)) * (1 - 0.45 * u2) * (1 - 0.1 * torch.exp(-(u / 0.05) ** 2))

        # Cavity: lit near the lips, dark toward the throat and the corners.
        near_lip = torch.exp(-torch.minimum(below_upper, above_lower).clamp(min=0.0) / (0.05 * width))
        lit = (0.2 + 0.8 * near_lip) * (1 - 0.5 * u2)
        dark = 1 - 0.4 * u2 * u2

        # Front-to-back compositing: upper teeth and gum over lower teeth over tongue over cavity.
        w_block = a_block * cover
        rest = cover - w_block
        w_lo = a_lo * rest
        rest = rest - w_lo
        w_tongue = a_tongue * rest
        rest = (rest - w_tongue) * dark
        w_gum = a_gum * cover
        # The wet rim: a faint highlight just inside the lower lip's edge, only where the lips part.
        rim = (RIM * torch.exp(-(((y - y_lo - 0.35 * self._rim_reach(width)) / 0.9) ** 2))
               * smoothstep(gap / 3.0) * (1 - u2).clamp(min=0.0) * spans * (1 - cover))
        weights = torch.cat([rest * (1 - lit), rest * lit, w_tongue * shade_tongue, w_lo * shade_lo,
                             w_gum * 0.9, (w_block - w_gum) * shade_up, rim], 1)
        return weights, cover + rim

    def paint(self, coeffs: torch.Tensor, window: tuple[int, int, int, int] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, h, w) colour premultiplied by coverage and (B, 1, h, w) coverage, over the ROI (or
        a `window` of it)."""
        weights, alpha = self.layers(coeffs, window)
        return F.conv2d(weights, self.palette), alpha

    def forward(self, canvas: torch.Tensor, coeffs: torch.Tensor, origin: tuple[int, int] = (0, 0),
                window: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """Composite the interior into `canvas` (B, 3, h, w), a crop of the frames whose top-left
        pixel is `origin` (y, x) in the frame, for (B, D) coefficients; only over `window` (see
        `window`) if given."""
        y0, y1, x0, x1 = self.box if window is None else window
        y0, y1, x0, x1 = y0 - origin[0], y1 - origin[0], x0 - origin[1], x1 - origin[1]
        colour, alpha = self.paint(coeffs, window)
        return paste(canvas, canvas[:, :, y0:y1, x0:x1] * (1 - alpha) + colour, y0, x0)
