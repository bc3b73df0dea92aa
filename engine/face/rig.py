"""The face rig: what each motion coefficient does to the portrait's own 3D landmarks.

Every blendshape is a displacement field over the landmarks, authored procedurally from
semantic groups (lip contours, jaw, eyelids, brows, cheeks, nose) in a face-local frame
whose unit is the face width, so a rig scales with the face. Head pose rotates the 3D
landmarks about a pivot behind the face and projects them orthographically; anchor
points around the head (hair, neck) follow it partially and the frame border not at all,
so a head turn does not drag the body.

The rest pose closes the lips: a photo taken mid-word or smiling with teeth shows an open
mouth, and an avatar at rest must not. `source_points` are where the points are in the
photo, `points` where they are at rest; the renderer samples the photo accordingly.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.spatial import Delaunay

from engine.face import topology as topo
from engine.face.analysis import Portrait
from engine.motion import spec

HAIR_RING = 1.45  # anchor ring around the head, as a multiple of the face oval's radius
NECK_RING = 1.3  # the same below eye level, where the ring lies on the neck and collar
BORDER_ANCHORS = 8  # anchors per frame edge (fixed points)


def _smooth(x: np.ndarray) -> np.ndarray:
    """Smoothstep on [0, 1], clamped outside."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


class _Sculptor:
    """Face-local geometry (unit = face width, x toward the image right, y down) and the
    procedural displacement of every blendshape, returned in the same units."""

    def __init__(self, local: np.ndarray):
        self.p = local  # (478, 3)
        u, v = local[:, 0], local[:, 1]
        self.u, self.v = u, v
        up, lo = np.array(topo.INNER_LIP_UPPER), np.array(topo.INNER_LIP_LOWER)
        self.mouth = local[np.r_[up, lo], :2].mean(0)
        self.corner = {"L": local[291, :2], "R": local[61, :2]}
        self.mouth_half = abs(local[291, 0] - local[61, 0]) / 2
        # Lip line (where upper and lower inner lips meet) and the photo's lip gap, both as functions of u.
        order = np.argsort(local[up, 0])
        self.lip_u = local[up, 0][order]
        self.lip_line = ((local[up, 1] + local[lo, 1]) / 2)[order]
        self.lip_gap = np.maximum(local[lo, 1] - local[up, 1], 0)[order]
        line = np.interp(u, self.lip_u, self.lip_line)
        outer_lo_x, outer_lo_y = local[list(topo.OUTER_LIP_LOWER), 0], local[list(topo.OUTER_LIP_LOWER), 1]
        outer_lo = np.interp(u, outer_lo_x, outer_lo_y)
        outer_up = np.interp(u, local[list(topo.OUTER_LIP_UPPER), 0], local[list(topo.OUTER_LIP_UPPER), 1])
        self.below = v - line  # signed distance below the lip line
        # 0 on the lip line, 1 at (and beyond) the lip's outer edge: where on its lip a point sits
        self.across_lower = np.clip(self.below / np.maximum(outer_lo - line, 1e-3), 0, 1)
        self.across_upper = np.clip(-self.below / np.maximum(line - outer_up, 1e-3), 0, 1)
        # Lower-face membership: 1 for the lower lip, chin and jaw; 0 above the lip line.
        low = _smooth(self.below / 0.035)
        low[up], low[lo] = 0.0, 1.0
        low[[61, 291, 78, 308]] = 0.35
        self.low = low
        self.jaw_reach = _smooth(1 - (np.abs(u - self.mouth[0]) - 0.28) / 0.22)  # fades toward the ears
        # Depth into the jaw counted from the lower lip's outer edge: the lip itself drops as one body
        # (keeps its thickness); only the chin below it drops further.
        chin_drop = max(local[topo.CHIN, 1] - np.interp(self.mouth[0], outer_lo_x, outer_lo_y), 1e-3)
        self.jaw_depth = np.clip((v - outer_lo) / chin_drop, 0, 1)
        within = (np.abs(u - self.mouth[0]) < self.mouth_half * 1.15).astype(float)
        self.lip_lower_band = within * _smooth(1 - (v - outer_lo) / 0.03) * (self.below > -1e-3)
        self.lip_upper_band = within * _smooth(1 - (outer_up - v) / 0.03) * (self.below < 1e-3)
        self.lip_lower_band[lo], self.lip_upper_band[up] = 1.0, 1.0
        self.centrality = np.clip(1 - ((u - self.mouth[0]) / self.mouth_half) ** 2, 0, 1)
        # How far the lower lip follows the jaw along the mouth: fully at the centre, like the corners
        # (low = 0.35) at the ends, a parabola between, so an opening mouth is a lens tapering into
        # its corners, not a box.
        self.lip_round = 1 - self.lip_lower_band * (1 - (0.35 + 0.65 * self.centrality))
        self.lip_round[[61, 291, 78, 308]] = 1.0
        # The upper lip's last stretch before each corner follows the corner down (a taper, not a notch).
        self.corner_pull = _smooth(1 - (1 - np.abs(u - self.mouth[0]) / self.mouth_half) / 0.5)

    # --- small helpers -------------------------------------------------------------------
    def near(self, center, radius) -> np.ndarray:
        """Gaussian falloff around a 2-D point; `radius` may be (rx, ry)."""
        r = np.broadcast_to(np.asarray(radius, float), (2,))
        d = (self.p[:, :2] - np.asarray(center)) / r
        return np.exp(-0.5 * (d**2).sum(1))

    def side(self, s: str) -> np.ndarray:
        """Weight of the subject's left ('L', image right) or right ('R') half of the mouth."""
        t = (self.u - self.mouth[0]) / self.mouth_half
        return _smooth(0.5 + (t if s == "L" else -t))

    def field(self, du=0.0, dv=0.0, dz=0.0) -> np.ndarray:
        out = np.zeros_like(self.p)
        out[:, 0], out[:, 1], out[:, 2] = du, dv, dz
        return out

    def eye(self, s: str):
        upper = np.array(topo.EYE_LEFT_UPPER if s == "L" else topo.EYE_RIGHT_UPPER)
        lower = np.array(topo.EYE_LEFT_LOWER if s == "L" else topo.EYE_RIGHT_LOWER)
        brow = np.array(topo.BROW_LEFT if s == "L" else topo.BROW_RIGHT)
        return upper, lower, brow

    # --- the blendshapes -----------------------------------------------------------------
    def closure(self) -> np.ndarray:
        """Displacement that closes the photo's open lips (the rest pose).

        At the lip line each point rises by the lip gap above it (zero at and beyond the
        corners); deeper down the whole jaw rises by the gap at the mouth's centre. Blending
        the two with depth keeps the field continuous, so the jaw line has no notch.
        """
        gap_lip = np.interp(self.u, self.lip_u, self.lip_gap, left=0.0, right=0.0)
        gap_jaw = np.interp(self.mouth[0], self.lip_u, self.lip_gap) * self.jaw_reach
        depth = _smooth(self.below / 0.06)
        dv = -self.low * (gap_lip + (gap_jaw - gap_lip) * depth)
        up, lo = list(topo.INNER_LIP_UPPER), list(topo.INNER_LIP_LOWER)
        dv[lo] = self.v[up] - self.v[lo]  # each lower inner-lip point meets its upper partner exactly
        return self.field(dv=dv)

    def eyelid(self, s: str, upper_amount: float, lower_amount: float) -> np.ndarray:
        """Move the upper lid by `upper_amount` of the eye opening (down > 0) and the lower lid up."""
        upper, lower, brow = self.eye(s)
        uu, uv, lv = self.p[upper, 0], self.p[upper, 1], self.p[lower, 1]
        gap_at = np.interp(self.u, uu, lv - uv)
        lid_at = np.interp(self.u, uu, uv)
        low_at = np.interp(self.u, uu, lv)
        brow_v = self.p[brow, 1].mean()
        span = (uu.min() - 0.03, uu.max() + 0.03)
        inside = _smooth(1 - np.maximum(span[0] - self.u, self.u - span[1]) / 0.05)
        above = _smooth(1 - (lid_at - self.v) / (0.6 * (lid_at - brow_v)))  # 1 at the lid, 0 near the brow
        below = _smooth(1 - (self.v - low_at) / 0.06)
        between = (self.v > lid_at + 1e-4) & (self.v < low_at - 1e-4)  # the eyeball (iris points)
        w_up = np.where(self.v <= lid_at + 1e-4, above, np.where(between, 0.5, 0.0)) * inside
        w_low = np.where(self.v >= low_at - 1e-4, below, 0.0) * inside
        w_up[upper], w_low[upper] = inside[upper], 0.0
        w_low[lower], w_up[lower] = inside[lower], 0.0
        w_up[[upper[0], upper[-1]]] = 0.0  # corners stay
        return self.field(dv=gap_at * (upper_amount * w_up - lower_amount * w_low))

    def brow_weight(self, s: str, part: str = "all") -> np.ndarray:
        """Falloff around the brow (both edges), or only its inner or outer end."""
        _, _, brow = self.eye(s)
        half = len(brow) // 2  # upper edge then lower edge, each from the image left
        inner_at = -1 if s == "R" else 0  # the inner end faces the nose
        ends = {"inner": [brow[inner_at % half], brow[half + inner_at % half]],
                "outer": [brow[(-1 - inner_at) % half], brow[half + (-1 - inner_at) % half]]}
        pts = self.p[ends[part] if part in ends else brow, :2]
        return np.max([self.near(q, (0.07, 0.06)) for q in pts], axis=0)

    def blendshape(self, name: str) -> np.ndarray:
        m, c = self.mouth, self.corner
        mouth_region = self.near(m, (0.32, 0.16))
        if name == "jawOpen":
            amount = self.low * self.jaw_reach * (0.15 + 0.07 * self.jaw_depth) * self.lip_round
            upper = (1 - self.low) * self.lip_upper_band
            lift = 0.012 * upper * np.sqrt(self.centrality)  # the upper lip rises a little on open vowels
            follow = 0.35 * 0.15 * self.jaw_reach * upper * self.corner_pull
            return self.field(dv=amount - lift + follow, dz=-0.2 * amount)
        if name in ("jawLeft", "jawRight"):
            return self.field(du=(0.06 if name == "jawLeft" else -0.06) * self.low * self.jaw_reach)
        if name == "mouthClose":  # the lips back where they rest, whatever the jaw does (m, b, p): undoes
            # jawOpen on both lips exactly, fading out over the skin around them; the chin stays
            lips = np.maximum(self.near(m, (0.3, 0.1)), np.maximum(self.lip_lower_band, self.lip_upper_band))
            return -self.blendshape("jawOpen") * lips[:, None]
        if name == "mouthFunnel":  # lips flared into a round opening: an ellipse, not a lens
            round_ = np.sqrt(self.centrality)
            open_ = 0.03 * round_ * (self.low * self.lip_lower_band - 0.8 * (1 - self.low) * self.lip_upper_band)
            return self.field(du=-0.3 * (self.u - m[0]) * mouth_region, dv=open_, dz=0.04 * mouth_region)
        if name == "mouthPucker":  # corners in, lips pushed out and thickened outward (they stay together)
            thicken = 0.012 * (self.low * self.lip_lower_band * self.across_lower
                               - (1 - self.low) * self.lip_upper_band * self.across_upper)
            lips = self.near(m, (0.28, 0.12))
            return self.field(du=-0.6 * (self.u - m[0]) * lips, dv=thicken, dz=0.06 * lips)
        if name in ("mouthLeft", "mouthRight"):
            return self.field(du=(0.06 if name == "mouthLeft" else -0.06) * self.near(m, (0.25, 0.14)))
        if name.startswith(("mouthSmile", "mouthFrown", "mouthStretch")):
            s = name[-1]
            sign = 1 if s == "L" else -1  # the subject's left is the image's right
            w = self.near(c[s], 0.11)
            du, dv = {"mouthSmile": (0.045, -0.05), "mouthFrown": (0.01, 0.05), "mouthStretch": (0.05, 0.02)}[name[:-2]]
            out = self.field(du=sign * du * w, dv=dv * w)
            if name.startswith("mouthSmile"):  # the cheek above the corner bunches up a little
                out[:, 1] -= 0.015 * self.near(c[s] + np.array([0.06 * sign, -0.12]), 0.09)
            return out
        if name == "mouthRollLower":
            return self.field(dv=-0.6 * np.maximum(self.below, 0) * self.lip_lower_band)
        if name == "mouthRollUpper":
            return self.field(dv=0.6 * np.maximum(-self.below, 0) * self.lip_upper_band)
        if name == "mouthShrugLower":
            return self.field(dv=-0.04 * self.low * self.near(m, (0.3, 0.25)))
        if name == "mouthShrugUpper":
            return self.field(dv=-0.03 * (1 - self.low) * self.near(m, (0.3, 0.08)))
        if name.startswith("mouthPress"):
            side = self.side(name[-1])
            return self.field(dv=0.35 * (-np.maximum(self.below, 0) * self.lip_lower_band
                                         + np.maximum(-self.below, 0) * self.lip_upper_band) * side)
        if name.startswith("mouthLowerDown"):
            return self.field(dv=0.05 * self.low * self.lip_lower_band * self.side(name[-1]))
        if name.startswith("mouthUpperUp"):
            return self.field(dv=-0.04 * (1 - self.low) * self.lip_upper_band * self.side(name[-1]))
        if name.startswith("eyeBlink"):
            return self.eyelid(name[-1], 0.92, 0.08)
        if name.startswith("eyeSquint"):
            s = name[-1]
            upper, lower, _ = self.eye(s)
            cheek = self.near(self.p[lower, :2].mean(0) + np.array([0, 0.1]), 0.08)
            return self.eyelid(s, 0.1, 0.25) + self.field(dv=-0.02 * cheek)
        if name.startswith("eyeWide"):
            return self.eyelid(name[-1], -0.3, 0.0)
        if name.startswith("browDown"):
            s = name[-1]
            toward_nose = -0.012 if s == "L" else 0.012
            w = self.brow_weight(s)
            return self.field(du=toward_nose * w, dv=0.035 * w)
        if name == "browInnerUp":
            return self.field(dv=-0.045 * np.maximum(self.brow_weight("L", "inner"), self.brow_weight("R", "inner")))
        if name.startswith("browOuterUp"):
            return self.field(dv=-0.04 * self.brow_weight(name[-1], "outer"))
        if name == "cheekPuff":
            w = self.near(m + np.array([0.3, -0.02]), 0.1) - self.near(m + np.array([-0.3, -0.02]), 0.1)
            return self.field(du=0.035 * w, dz=0.02 * np.abs(w))
        if name.startswith("cheekSquint"):
            _, lower, _ = self.eye(name[-1])
            return self.field(dv=-0.025 * self.near(self.p[lower, :2].mean(0) + np.array([0, 0.12]), 0.1))
        if name.startswith("noseSneer"):
            wing = topo.NOSE_WING_LEFT if name[-1] == "L" else topo.NOSE_WING_RIGHT
            return self.field(dv=-0.025 * self.near(self.p[list(wing), :2].mean(0), 0.06))
        raise KeyError(f"no rig shape for coefficient {name!r}")


class Rig:
    """A portrait's rig: rest points, triangles over the whole frame, and the motion model.

    Points are the 478 landmarks followed by anchors (hair/neck ring, frame border), all in
    frame pixels. `targets(coeffs)` is the exact pose; `basis` its linearization, so that
    `points + coeffs @ basis` approximates it (exactly for blendshapes, which are linear).
    """

    def __init__(self, portrait: Portrait):
        self.image = portrait.frame
        size = portrait.size
        lm = portrait.landmarks.astype(np.float64)
        # Face-local frame: origin between the cheeks, x along the eyes, unit = face width.
        eye_r = lm[[33, 133], :2].mean(0)
        eye_l = lm[[362, 263], :2].mean(0)
        angle = np.arctan2(*(eye_l - eye_r)[::-1])
        self.face_width = float(np.linalg.norm(lm[topo.CHEEK_LEFT, :2] - lm[topo.CHEEK_RIGHT, :2]))
        self.origin = lm[[topo.CHEEK_RIGHT, topo.CHEEK_LEFT], :2].mean(0)
        cos, sin = np.cos(angle), np.sin(angle)
        self._axes = np.array([[cos, sin], [-sin, cos]])  # rows: local x and y in frame pixels
        local = np.empty_like(lm)
        local[:, :2] = (lm[:, :2] - self.origin) @ self._axes.T / self.face_width
        local[:, 2] = (lm[:, 2] - lm[:, 2].mean()) / self.face_width
        sculptor = _Sculptor(local)

        # Rest pose: the photo's landmarks with the lips closed; anchors stay where they are.
        anchors, anchor_follow = self._anchors(lm, size)
        self.source_points3d = np.concatenate([lm, anchors])
        self.rest3d = np.concatenate([self._to_frame(local + sculptor.closure()), anchors])
        self.source_points = self.source_points3d[:, :2].astype(np.float32)
        self.points = self.rest3d[:, :2].astype(np.float32)
        self._shapes = np.stack([sculptor.blendshape(n) for n in spec.BLENDSHAPES])  # (K, 478, 3) local units

        # How much each point follows head pose: the face fully, hair mostly, neck a little, the border not.
        self.head_weight = np.concatenate([np.ones(topo.NUM_LANDMARKS), anchor_follow])
        oval = lm[list(topo.FACE_OVAL)]
        self.pivot = np.array([*oval[:, :2].mean(0), oval[:, 2].mean() - 0.6 * self.face_width])  # behind the face
        self.triangles = self._triangulate(size)
        self.groups = {
            "inner_lip_upper": np.array(topo.INNER_LIP_UPPER), "inner_lip_lower": np.array(topo.INNER_LIP_LOWER),
            "outer_lip_upper": np.array(topo.OUTER_LIP_UPPER), "outer_lip_lower": np.array(topo.OUTER_LIP_LOWER),
            "eye_left_upper": np.array(topo.EYE_LEFT_UPPER), "eye_left_lower": np.array(topo.EYE_LEFT_LOWER),
            "eye_right_upper": np.array(topo.EYE_RIGHT_UPPER), "eye_right_lower": np.array(topo.EYE_RIGHT_LOWER),
            "face_oval": np.array(topo.FACE_OVAL),
        }
        self.basis = self._linearize()

    # --- construction ----------------------------------------------------------------------
    def _to_frame(self, local: np.ndarray) -> np.ndarray:
        out = np.empty_like(local)
        out[:, :2] = local[:, :2] * self.face_width @ self._axes + self.origin
        out[:, 2] = local[:, 2] * self.face_width
        return out

    def _anchors(self, lm: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) hair/neck ring around the face oval and fixed frame-border points, and how
        much each follows head pose."""
        oval = lm[list(topo.FACE_OVAL)]
        center = oval[:, :2].mean(0)
        eye_level = lm[[33, 263], 1].mean()
        ring, weight = [], []
        for p in oval:
            above = p[1] < eye_level
            q = center + (HAIR_RING if above else NECK_RING) * (p[:2] - center)
            if 2 <= q[0] <= size - 3 and 2 <= q[1] <= size - 3:
                ring.append([q[0], q[1], p[2] - 0.15 * self.face_width])
                # hair follows the head; the neck less so the further below the chin
                weight.append(0.9 if above else float(np.clip(0.9 - (q[1] - eye_level) / self.face_width, 0.15, 0.9)))
        edge = np.linspace(0, size - 1, BORDER_ANCHORS + 1)
        border = {(x, y) for x in edge for y in (0, size - 1)} | {(x, y) for y in edge for x in (0, size - 1)}
        z = float(oval[:, 2].mean() - 0.3 * self.face_width)
        border_pts = [[x, y, z] for x, y in sorted(border)]
        return np.array(ring + border_pts, np.float64).reshape(-1, 3), np.array(weight + [0.0] * len(border_pts))

    def _triangulate(self, size: int) -> np.ndarray:
        """Face mesh triangles plus a Delaunay fill from the face oval out to the frame border."""
        pts = self.source_points
        oval = list(topo.FACE_OVAL)
        outer = oval + list(range(topo.NUM_LANDMARKS, len(pts)))
        fill = Delaunay(pts[outer]).simplices
        contour = pts[oval].reshape(-1, 1, 2)
        centroids = pts[outer][fill].mean(1)
        outside = [cv2.pointPolygonTest(contour, (float(x), float(y)), False) < 0 for x, y in centroids]
        fill = np.array(outer)[fill[np.array(outside)]]
        tris = np.concatenate([topo.mesh_triangles(), fill]).astype(np.int32)
        return topo.orient(tris, pts)

    def _linearize(self) -> np.ndarray:
        """(D, P, 2): exact for blendshapes; least squares over sampled values for head pose."""
        rest = self.points.astype(np.float64)
        basis = np.zeros((spec.D, len(rest), 2))
        for name in spec.NAMES:
            k = spec.index(name)
            coeff = spec.COEFFS[k]
            samples = [coeff.high * f for f in (0.25, 0.5, 1.0)] + [coeff.low * f for f in (0.25, 0.5, 1.0)]
            samples = [v for v in samples if v != 0]
            num = sum(v * (self.targets(spec.from_dict({name: v})) - rest) for v in samples)
            basis[k] = num / sum(v * v for v in samples)
        return basis.astype(np.float32)

    # --- posing --------------------------------------------------------------------------------
    def targets3d(self, coeffs: np.ndarray) -> np.ndarray:
        """(P, 3) posed points in frame pixels for one (D,) vector of raw coefficients."""
        coeffs = np.asarray(coeffs, np.float64)
        shapes = coeffs[: len(spec.BLENDSHAPES)]
        face = self.rest3d.copy()
        if np.any(shapes):
            local = np.tensordot(shapes, self._shapes, axes=1)  # (478, 3) local units
            face[: topo.NUM_LANDMARKS, :2] += local[:, :2] * self.face_width @ self._axes
            face[: topo.NUM_LANDMARKS, 2] += local[:, 2] * self.face_width
        yaw, pitch, roll, tx, ty, scale = (coeffs[spec.index(n)] for n in spec.HEAD)
        if not any((yaw, pitch, roll, tx, ty, scale)):
            return face
        # Rotation in frame axes (x right, y down, z toward the camera); see engine.motion.spec for signs.
        cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
        r_yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        r_pitch = np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])
        r_roll = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
        rot = r_roll @ r_pitch @ r_yaw
        rel = face - self.pivot
        moved = (1 + scale) * rel @ rot.T + self.pivot
        moved[:, 0] += tx * self.face_width
        moved[:, 1] += ty * self.face_width
        return face + self.head_weight[:, None] * (moved - face)

    def targets(self, coeffs: np.ndarray) -> np.ndarray:
        """(P, 2) posed points in frame pixels (orthographic projection of `targets3d`)."""
        return self.targets3d(coeffs)[:, :2].astype(np.float32)
