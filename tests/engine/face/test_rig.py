import numpy as np
import pytest

from engine.face import topology as topo
from engine.motion import spec

EYES = list(topo.EYE_LEFT_UPPER + topo.EYE_LEFT_LOWER + topo.EYE_RIGHT_UPPER + topo.EYE_RIGHT_LOWER)
MOUTH = list(topo.INNER_LIP_UPPER + topo.INNER_LIP_LOWER + topo.OUTER_LIP_UPPER + topo.OUTER_LIP_LOWER)


def moved(rig, **coeffs):
    return np.linalg.norm(rig.targets(spec.from_dict(coeffs)) - rig.points, axis=1)


def test_triangles_cover_the_frame_with_consistent_winding(rig):
    p = rig.source_points
    t = p[rig.triangles]
    area = (t[:, 1, 0] - t[:, 0, 0]) * (t[:, 2, 1] - t[:, 0, 1]) - (t[:, 1, 1] - t[:, 0, 1]) * (t[:, 2, 0] - t[:, 0, 0])
    assert (area >= 0).all()
    assert abs(area.sum() / 2 - 511 * 511) / (511 * 511) < 0.03  # no big holes or overlaps


def test_rest_pose_closes_the_lips(rig):
    up, lo = list(topo.INNER_LIP_UPPER), list(topo.INNER_LIP_LOWER)
    assert np.abs(rig.points[lo, 1] - rig.points[up, 1]).max() < 1.0


def test_jaw_open_moves_chin_and_lower_lip_not_eyes(rig):
    d = moved(rig, jawOpen=1.0)
    assert d[topo.CHIN] > 0.15 * rig.face_width
    assert d[list(topo.INNER_LIP_LOWER[3:8])].min() > 0.1 * rig.face_width  # the middle of the lower lip
    assert d[list(topo.INNER_LIP_LOWER[1:-1])].min() > 0.05 * rig.face_width  # less toward the corners (a lens)
    assert d[list(topo.INNER_LIP_UPPER[2:-2])].max() < 0.02 * rig.face_width
    assert d[list(topo.INNER_LIP_UPPER[1:-1])].max() < 0.035 * rig.face_width  # its ends follow the corners a bit
    assert d[EYES].max() < 0.5
    assert d[topo.FOREHEAD] < 0.5


@pytest.mark.parametrize("side", ["L", "R"])
def test_blink_closes_the_eyelid_gap(rig, side):
    upper = list(topo.EYE_LEFT_UPPER if side == "L" else topo.EYE_RIGHT_UPPER)[1:-1]
    lower = list(topo.EYE_LEFT_LOWER if side == "L" else topo.EYE_RIGHT_LOWER)[1:-1]
    gap0 = (rig.points[lower, 1] - rig.points[upper, 1]).mean()
    posed = rig.targets(spec.from_dict({f"eyeBlink_{side}": 1.0}))
    gap1 = (posed[lower, 1] - posed[upper, 1]).mean()
    assert gap0 > 3 and abs(gap1) < 0.2 * gap0
    other = list(topo.EYE_RIGHT_UPPER if side == "L" else topo.EYE_LEFT_UPPER)
    assert moved(rig, **{f"eyeBlink_{side}": 1.0})[other + MOUTH].max() < 0.5


@pytest.mark.parametrize("name", spec.BLENDSHAPES)
def test_every_blendshape_moves_its_region_only(rig, name):
    d = moved(rig, **{name: 1.0})
    assert d.max() > 0.02 * rig.face_width, f"{name} barely moves anything"
    assert d[topo.NUM_LANDMARKS:].max() == 0, "blendshapes never move anchors"
    if name.startswith(("eye", "brow")):
        assert d[MOUTH].max() < 0.5
    if name.startswith(("mouth", "jaw")):
        assert d[EYES].max() < 0.5


@pytest.mark.parametrize("pair", [("mouthSmile_L", "mouthSmile_R"), ("eyeBlink_L", "eyeBlink_R")])
def test_left_means_the_subjects_left(rig, pair):
    left, right = (moved(rig, **{n: 1.0}) for n in pair)
    image_right = rig.points[:478, 0] > rig.points[topo.NOSE_TIP, 0]
    assert left[:478][image_right].sum() > 5 * left[:478][~image_right].sum()
    assert right[:478][~image_right].sum() > 5 * right[:478][image_right].sum()


def test_head_pose_moves_face_not_border(rig):
    turned = rig.targets(spec.from_dict({"headYaw": 0.2}))
    assert turned[topo.NOSE_TIP, 0] - rig.points[topo.NOSE_TIP, 0] > 5  # toward the subject's left
    border = rig.head_weight == 0
    assert np.array_equal(turned[border], rig.points[border])
    nod = rig.targets(spec.from_dict({"headPitch": 0.2}))
    assert nod[topo.NOSE_TIP, 1] > rig.points[topo.NOSE_TIP, 1] + 5


def test_basis_is_exact_for_blendshapes_and_close_for_small_head_motion(rig, rng):
    c = spec.neutral()
    for name in ("jawOpen", "mouthSmile_L", "eyeBlink_R", "browInnerUp"):
        c[spec.index(name)] = rng.uniform(0.2, 1.0)
    np.testing.assert_allclose(rig.points + np.tensordot(c, rig.basis, 1), rig.targets(c), atol=1e-3)
    c[spec.index("headYaw")] = 0.08
    assert np.abs(rig.points + np.tensordot(c, rig.basis, 1) - rig.targets(c)).max() < 1.5
