"""The warp's linear basis of backward flow fields, built once per avatar (numpy + cv2).

`rest_image` first bakes the rig's rest pose into the image (the photo warped exactly, at
full resolution, from its landmarks to the rest points, e.g. lips closed), so the rest pose
is the identity and no flow has to carry the photo-to-rest jump at the lip line.
Then for every coefficient k and a few sample values v, the target mesh
`rig.targets(v e_k)` is rasterized (triangles drawn back to front by depth) and each pixel's
barycentrics in its target triangle give the rest-image position it shows: a backward flow.
One field per coefficient is fitted over the samples by least squares (sum_v v F_v / sum_v v^2),
so a frame's flow is `coeffs @ basis`. The mesh is the rig's, refined around the upper lids
(engine.render.mesh) so the lashes travel with the lid instead of smearing.

Openings (the inner-lip and eyelid "ladder" triangles) get a split rule instead of plain
barycentrics when a coefficient changes their height: pixels above a split line move with
the upper contour, pixels below it with the lower one. The split sits where the contours
would meet (a blink moves the upper lid 92% of the way: split at 92%; a jaw drop moves
only the lower lip: split at the upper lip), so a pixel stays on one side for every sample
value: the flow is exactly linear in v for rigid lid and lip motion, a blink closes
fully, and lip edges carry no stretched pixels. Gap-preserving motion (head pose) and an
eye opening wider use plain barycentrics (a stretch).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from engine.render.mesh import refine_lids

OPENINGS = (("inner_lip_upper", "inner_lip_lower"), ("eye_left_upper", "eye_left_lower"),
            ("eye_right_upper", "eye_right_lower"))
MOUTH = 0  # index of the mouth in OPENINGS: split even when it opens (the interior covers it)
BLENDSHAPE_SAMPLES = (0.25, 0.5, 0.75, 0.9, 1.0)  # fractions of a coefficient's range
HEAD_SAMPLES = (-1.0, -0.5, 0.5, 1.0)  # fractions of |high| for signed (head pose) coefficients
MIN_GAP_CHANGE = 0.25  # px: below this an opening counts as keeping its height (stretch rule)
SUBPIXEL_BITS = 4


@dataclass(frozen=True)
class Openings:
    """Which triangles fill which opening, and which contour each point belongs to."""

    which: np.ndarray  # (T,) int: index into OPENINGS, -1 for ordinary triangles
    side: np.ndarray  # (P,) int8: +1 on an upper contour, -1 on a lower one, 0 elsewhere (corners too)
    contours: list  # per opening: (upper interior indices, lower interior indices)

    @classmethod
    def of(cls, rig) -> "Openings":
        tris = np.asarray(rig.triangles)
        side, which, contours = np.zeros(len(rig.points), np.int8), np.full(len(tris), -1), []
        for o, (up_name, lo_name) in enumerate(OPENINGS):
            up, lo = np.asarray(rig.groups.get(up_name, [])), np.asarray(rig.groups.get(lo_name, []))
            contours.append((up[1:-1], lo[1:-1]))
            if len(up) < 3:
                continue
            side[up[1:-1]], side[lo[1:-1]] = 1, -1
            members = np.isin(tris, np.r_[up, lo]).all(1)
            which[members & (side[tris] == 1).any(1) & (side[tris] == -1).any(1)] = o
        return cls(which=which, side=side, contours=contours)

    def splits(self, rest: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Per opening, where its split line sits (fraction of the height from the upper
        contour) for a move from `rest` to `target`, or NaN to stretch it instead."""
        out = np.full(len(self.contours), np.nan)
        for o, (up, lo) in enumerate(self.contours):
            if len(up) == 0:
                continue
            d_up, d_lo = (target[up, 1] - rest[up, 1]).mean(), (target[lo, 1] - rest[lo, 1]).mean()
            closing = d_up - d_lo
            if closing > MIN_GAP_CHANGE or (o == MOUTH and closing < -MIN_GAP_CHANGE):
                out[o] = np.clip(d_up / closing, 0.0, 1.0)
        return out


def rasterize(points: np.ndarray, triangles: np.ndarray, size: int, order: np.ndarray) -> np.ndarray:
    """(size, size) index of the triangle covering each integer pixel centre (-1: none).

    `points` are in pixels of the grid; triangles are drawn in `order` (later ones win);
    degenerate ones are skipped.
    """
    ids = np.full((size, size), -1, np.int32)
    p = points[triangles]
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    fixed = np.round(p * (1 << SUBPIXEL_BITS)).astype(np.int32)
    for t in order:
        if abs(det[t]) > 1e-9:
            cv2.fillConvexPoly(ids, fixed[t], int(t), lineType=cv2.LINE_8, shift=SUBPIXEL_BITS)
    return ids


def barycentrics(points: np.ndarray, triangles: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """(N, 3) barycentric weights of points `xy` (N, 2) in their triangles (N, 3), clamped
    to the triangle (the rasterizer also fills pixels its edges merely touch)."""
    p = points[triangles]  # (N, 3, 2)
    e1, e2, d = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], xy - p[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    det = np.where(np.abs(det) > 1e-9, det, 1e-9)
    b1 = (d[:, 0] * e2[:, 1] - d[:, 1] * e2[:, 0]) / det
    b2 = (e1[:, 0] * d[:, 1] - e1[:, 1] * d[:, 0]) / det
    bary = np.clip(np.stack([1 - b1 - b2, b1, b2], -1), 0.0, None)
    return bary / np.maximum(bary.sum(-1, keepdims=True), 1e-9)


class FlowRasterizer:
    """Backward flow (source position minus pixel position, frame pixels) of posed meshes,
    on a grid_size x grid_size grid, at the flat grid indices `pixels` (default: all).
    `source` holds where each point is in the image sampled (default: its rest position).

    Grid pixel (i, j) sits at frame position ((j + .5) f - .5, (i + .5) f - .5), f = frame
    size / grid size, matching bilinear upsampling with align_corners=False.
    """

    def __init__(self, rig, grid_size: int, pixels: np.ndarray | None = None, source: np.ndarray | None = None):
        self.rig, self.size, self.scale = rig, grid_size, rig.image.shape[0] / grid_size
        openings = Openings.of(rig)
        self.mesh = refine_lids(rig, openings.which >= 0)
        self.openings = Openings(which=openings.which[self.mesh.original],
                                 side=np.r_[openings.side, np.zeros(len(self.mesh.parents), np.int8)],
                                 contours=openings.contours)
        self.source = self.mesh.extend(rig.points if source is None else source)
        self.rest_points = self.mesh.extend(rig.points)
        self.triangles = self.mesh.triangles
        self.pixels = np.arange(grid_size * grid_size) if pixels is None else np.asarray(pixels)
        self.xy = np.stack([self.pixels % grid_size, self.pixels // grid_size], -1).astype(np.float64)
        self.rest_ids = self._ids(np.zeros(len(rig.basis), np.float32), self.rest_points)
        self.rest = self._interpolate(self.rest_points, self.rest_ids, np.arange(len(self.pixels)), None)

    def _grid(self, frame_points: np.ndarray) -> np.ndarray:
        return (frame_points + 0.5) / self.scale - 0.5

    def _ids(self, coeffs: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Triangle under each wanted pixel; openings first, then back to front by depth."""
        if hasattr(self.rig, "targets3d"):
            depth = self.mesh.extend(self.rig.targets3d(coeffs))[:, 2]
        else:
            depth = np.zeros(len(target))
        key = np.where(self.openings.which >= 0, -np.inf, depth[self.triangles].mean(1))
        ids = rasterize(self._grid(target), self.triangles, self.size, np.argsort(key, kind="stable"))
        return ids.ravel()[self.pixels]

    def _interpolate(self, target: np.ndarray, ids: np.ndarray, rows: np.ndarray, splits) -> np.ndarray:
        """(N, 2) flow at wanted pixels `rows` (indices into self.pixels)."""
        t = np.maximum(ids[rows], 0)
        tri = self.triangles[t]  # (N, 3)
        weights = barycentrics(self._grid(target), tri, self.xy[rows])
        opening = self.openings.which[t]
        if splits is not None and opening.max() >= 0:
            split = np.where(opening >= 0, splits[opening], np.nan)[:, None]
            side = self.openings.side[tri]
            w_up = (weights * (side == 1)).sum(-1, keepdims=True)
            w_lo = (weights * (side == -1)).sum(-1, keepdims=True)
            below = w_lo / np.maximum(w_up + w_lo, 1e-9) > split  # fraction of the height from the top
            keep = (side == 0) | (side == np.where(below, -1, 1))
            kept = np.where(keep, weights, 0.0)
            kept /= np.maximum(kept.sum(-1, keepdims=True), 1e-9)
            weights = np.where(np.isnan(split), weights, kept)
        flow = (weights[..., None] * (self.source - target)[tri]).sum(1)
        flow[ids[rows] < 0] = 0.0  # outside every triangle (never, for a rig that covers the frame): identity
        return flow

    def __call__(self, coeffs: np.ndarray) -> np.ndarray:
        """(N, 2) flow at the wanted pixels for one (D,) coefficient vector."""
        target = self.mesh.extend(self.rig.targets(coeffs))
        moved = np.abs(target - self.rest_points).max(1) > 1e-9
        flow = self.rest.copy()
        if not moved.any():
            return flow
        ids = self._ids(coeffs, target)
        changed = np.flatnonzero((ids != self.rest_ids) | moved[self.triangles[np.maximum(ids, 0)]].any(1))
        flow[changed] = self._interpolate(target, ids, changed, self.openings.splits(self.rest_points, target))
        return flow


def rest_image(rig) -> np.ndarray:
    """The portrait warped exactly (full resolution) from the photo's landmarks
    (`rig.source_points`) to the rest pose (`rig.points`, e.g. with the lips closed)."""
    size = rig.image.shape[0]
    source = getattr(rig, "source_points", None)
    if source is None or np.array_equal(source, rig.points):
        return rig.image.copy()
    flow = FlowRasterizer(rig, size, source=source).rest.reshape(size, size, 2).astype(np.float32)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return cv2.remap(rig.image, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def sample_values(low: float, high: float) -> list[float]:
    """Where a coefficient's flow is sampled: fractions of its range, both signs if it has them."""
    if low < 0 < high:
        return [abs(high) * s if s > 0 else abs(low) * s for s in HEAD_SAMPLES]
    return [high * s for s in BLENDSHAPE_SAMPLES]


def fit_flow_basis(raster: FlowRasterizer, bounds: tuple[np.ndarray, np.ndarray], which: np.ndarray,
                   context: dict[int, int] | None = None) -> np.ndarray:
    """(len(which), N, 2) flow per unit of each coefficient in `which`, relative to the rest
    flow, at the rasterizer's pixels, in grid_sample's normalized units (align_corners=False);
    least squares over each coefficient's sample values.

    context {k: j}: coefficient k's flow is measured on top of j at the same value (what k adds
    to j), for coefficients defined on another: mouthClose closes the lips of an open jaw; alone
    it would push the lips through each other, whose flow does not add back to a closed mouth."""
    low, high = bounds
    context = context or {}
    basis = np.zeros((len(which), *raster.rest.shape))
    for i, k in enumerate(which):
        values = sample_values(float(low[k]), float(high[k]))
        for v in values:
            base = np.zeros(len(low), np.float32)
            if k in context:
                base[context[k]] = v
            coeffs = base.copy()
            coeffs[k] = v
            start = raster(base) if k in context else raster.rest
            basis[i] += v * (raster(coeffs) - start)
        basis[i] /= sum(v * v for v in values)
    return (basis * (2.0 / raster.rig.image.shape[0])).astype(np.float32)  # frame pixels -> normalized units


def fit_detail_residual(rig, bounds, which: np.ndarray, coarse: np.ndarray,
                        box: tuple[int, int, int, int], context: dict[int, int] | None = None) -> np.ndarray:
    """(K, 2, h, w) full-resolution flow per unit of each coefficient in `which` inside `box`
    (y0, y1, x0, x1 frame pixels), minus the bilinear upsampling of its `coarse` (K, 2, hc, wc)
    field, tapered to zero at the box's edges: what to add to the upsampled coarse flow where
    it jumps (lips, lids). context: as fit_flow_basis's."""
    size = rig.image.shape[0]
    factor = size // coarse.shape[-1]
    a, b, c, d = box
    pixels = (np.arange(a, b)[:, None] * size + np.arange(c, d)).ravel()
    fine = fit_flow_basis(FlowRasterizer(rig, size, pixels), bounds, which, context)  # (K, N, 2)
    smooth = F.interpolate(torch.from_numpy(np.ascontiguousarray(coarse, np.float32)), scale_factor=factor,
                           mode="bilinear", align_corners=False)[:, :, a:b, c:d].numpy()
    return (fine.reshape(-1, b - a, d - c, 2).transpose(0, 3, 1, 2) - smooth) * _taper(b - a, d - c, factor)


def _taper(h: int, w: int, ramp: int) -> np.ndarray:
    """(h, w) weights rising from 0 at the edges to 1 over `ramp` pixels."""
    def edge(n):
        i = np.arange(n)
        return np.clip(np.minimum(i, n - 1 - i) / ramp, 0.0, 1.0)
    return edge(h)[:, None] * edge(w)[None, :]
