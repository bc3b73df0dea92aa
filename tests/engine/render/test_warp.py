"""The warp machinery on a synthetic mesh whose motion is known in closed form."""

import cv2
import numpy as np
import torch
from scipy.spatial import Delaunay

from engine.render.renderer import Renderer
from engine.render.warp import Openings, barycentrics

SIZE = 128
SHIFT = np.array([4.0, -3.0])  # px per unit of the coefficient
LINEAR = np.array([[0.03, -0.02], [0.02, 0.03]])  # a small rotation + scale about the centre, per unit


class AffineRig:
    """A grid mesh over a textured frame; its one coefficient moves every point affinely."""

    def __init__(self):
        rng = np.random.default_rng(0)
        noise = cv2.GaussianBlur(rng.uniform(0, 255, (SIZE, SIZE, 3)).astype(np.float32), (0, 0), 2.0)
        self.image = np.clip((noise - noise.mean()) * 4 + 128, 0, 255).astype(np.uint8)
        g = np.linspace(-20, SIZE + 19, 10)
        self.points = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2).astype(np.float32)
        self.triangles = Delaunay(self.points).simplices.astype(np.int32)
        centre = np.array([SIZE / 2, SIZE / 2])
        self.basis = (SHIFT + (self.points - centre) @ LINEAR.T)[None].astype(np.float32)  # (1, P, 2)
        self.groups = {"inner_lip_upper": np.array([44, 45]), "inner_lip_lower": np.array([44, 45]),
                       "face_oval": np.array([33, 36, 66, 63])}

    def targets(self, coeffs):
        return self.points + coeffs[0] * self.basis[0]


def test_barycentrics_reconstruct_points():
    pts = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    xy = np.array([[2.0, 3.0], [5.0, 5.0]])
    w = barycentrics(pts, np.array([[0, 1, 2], [0, 1, 2]]), xy)
    assert np.allclose(w @ pts, xy) and np.allclose(w.sum(1), 1)


def test_affine_motion_renders_the_affine_warp():
    rig = AffineRig()
    renderer = Renderer(rig, flow_size=32, bounds=(np.array([0.0]), np.array([1.0])), head=[])
    with torch.no_grad():
        frame = renderer(torch.ones(1, 1))[0].permute(1, 2, 0).numpy() * 255
    # Forward map x -> x + SHIFT + LINEAR (x - c): warp the image with it directly.
    centre = np.array([SIZE / 2, SIZE / 2])
    forward = np.c_[np.eye(2) + LINEAR, SHIFT - LINEAR @ centre]
    expected = cv2.warpAffine(rig.image, forward, (SIZE, SIZE), flags=cv2.INTER_LINEAR).astype(np.float32)
    inner = (slice(12, -12), slice(12, -12))
    assert np.abs(frame - expected)[inner].mean() < 2.0  # < 1% of the range, with a texture of full contrast
    with torch.no_grad():
        rest = renderer(torch.zeros(1, 1))[0].permute(1, 2, 0).numpy() * 255
    assert np.abs(rest - rig.image).max() < 0.01


def test_split_sits_where_the_contours_meet():
    """Blink-like closing splits where the lids meet; a jaw drop splits at the upper lip
    (the mouth only); a move that keeps the opening's height stretches it instead (NaN)."""

    class TwoOpenings:
        points = np.array([[0, 0], [10, -2], [20, 0], [10, 2],  # mouth: corner, upper, corner, lower
                           [30, 0], [40, -6], [50, 0], [40, 6]], np.float64)  # left eye likewise
        groups = {"inner_lip_upper": np.array([0, 1, 2]), "inner_lip_lower": np.array([0, 3, 2]),
                  "eye_left_upper": np.array([4, 5, 6]), "eye_left_lower": np.array([4, 7, 6])}
        triangles = np.array([[0, 1, 3], [1, 2, 3], [4, 5, 7], [5, 6, 7]], np.int32)

    rig = TwoOpenings()
    openings = Openings.of(rig)
    assert openings.which.tolist() == [0, 0, 1, 1]
    rest = rig.points
    blink = rest.copy()
    blink[5, 1] += 11.0
    blink[7, 1] -= 1.0
    assert np.isclose(openings.splits(rest, blink)[1], 11 / 12)
    jaw = rest.copy()
    jaw[3, 1] += 8.0
    assert openings.splits(rest, jaw)[0] == 0.0
    wide = rest.copy()
    wide[5, 1] -= 3.0
    assert np.isnan(openings.splits(rest, wide)[1]), "an eye opening wider stretches"
    assert np.isnan(openings.splits(rest, rest + [5.0, 3.0])).all(), "rigid moves stretch (exactly affine)"
