"""Mesh refinement for the warp: a lash band that travels rigidly with each upper eyelid.

FaceMesh's first ring of triangles above the upper lid is several pixels tall, so a
piecewise-affine warp stretches the lashes along with the lid skin as the lid comes down
(a blink smears them into streaks). Here every skin triangle touching an upper-lid point
is cut a few pixels from that point; the new points move exactly like their lid point, so
the lash band translates as a whole and only the skin above it stretches, as a real lid does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LASH_BAND = 0.02  # thickness of the rigid band above the upper lid, in face widths


@dataclass(frozen=True)
class RefinedMesh:
    triangles: np.ndarray  # (T', 3) into the rig's points followed by the added ones
    parents: np.ndarray  # (V,) the rig point each added point moves with
    offsets: np.ndarray  # (V, 2) its rest position minus its parent's
    original: np.ndarray  # (T',) the rig triangle each triangle came from

    def extend(self, points: np.ndarray) -> np.ndarray:
        """(P + V, k) positions of every point given (P, k) positions of the rig's points."""
        points = np.asarray(points, np.float64)
        moved = points[self.parents].copy()
        moved[:, :2] += self.offsets
        return np.concatenate([points, moved])


def _signed_area(p: np.ndarray) -> float:
    return 0.5 * ((p[1, 0] - p[0, 0]) * (p[2, 1] - p[0, 1]) - (p[1, 1] - p[0, 1]) * (p[2, 0] - p[0, 0]))


def _triangulate(polygon: list[int], xy: np.ndarray, first: set[int]) -> list[tuple[int, int, int]]:
    """Ear-clip a convex polygon (collinear points allowed), cutting ears at `first` vertices first."""
    poly, out = list(polygon), []
    while len(poly) > 3:
        corners = [[poly[i - 1], poly[i], poly[(i + 1) % len(poly)]] for i in range(len(poly))]
        ears = [i for i, c in enumerate(corners) if abs(_signed_area(xy[c])) > 1e-9]
        if not ears:
            break
        i = next((i for i in ears if poly[i] in first), ears[0])
        out.append((poly[i - 1], poly[i], poly[(i + 1) % len(poly)]))
        poly.pop(i)
    if len(poly) == 3 and abs(_signed_area(xy[poly])) > 1e-9:
        out.append(tuple(poly))
    return out


def refine_lids(rig, opening_triangles: np.ndarray) -> RefinedMesh:
    """Cut skin triangles around the upper-lid points (corners excluded) at LASH_BAND."""
    points, tris = np.asarray(rig.points, np.float64), np.asarray(rig.triangles)
    band = LASH_BAND * float(getattr(rig, "face_width", 0.0))
    rigid, chain = set(), set()
    for name in ("eye_left_upper", "eye_right_upper"):
        if name in rig.groups and band > 0:
            contour = np.asarray(rig.groups[name])
            rigid |= set(contour[1:-1].tolist())
            chain |= set(contour.tolist())
    cut: dict[tuple[int, int], int] = {}  # (lid point, other end) -> added point
    parents, offsets, xy = [], [], list(points)
    out, original = [], []
    for t, tri in enumerate(tris):
        tri = [int(v) for v in tri]
        if opening_triangles[t] or not rigid.intersection(tri):
            out.append(tuple(tri))
            original.append(t)
            continue
        polygon = []
        for i in range(3):
            a, b = tri[i], tri[(i + 1) % 3]
            polygon.append(a)
            for lid, other in ((a, b), (b, a)):  # cut the edge near its lid end, if exactly one end is on the lid
                if lid in rigid and other not in chain:
                    key = (lid, other)
                    if key not in cut:
                        length = np.linalg.norm(points[other] - points[lid])
                        offset = (points[other] - points[lid]) * min(band, 0.5 * length) / max(length, 1e-9)
                        cut[key] = len(xy)
                        xy.append(points[lid] + offset)
                        parents.append(lid)
                        offsets.append(offset)
                    polygon.append(cut[key])
        pieces = _triangulate(polygon, np.array(xy), rigid)
        out += pieces
        original += [t] * len(pieces)
    return RefinedMesh(triangles=np.array(out, np.int32), parents=np.array(parents, np.int64),
                       offsets=np.array(offsets, np.float64).reshape(-1, 2), original=np.array(original))
