import numpy as np

from engine.face import topology as topo
from engine.face.measure import mouth_box


def inside(points, box) -> np.ndarray:
    rows, cols = box
    y, x = points[:, 1], points[:, 0]
    return (y >= rows.start) & (y < rows.stop) & (x >= cols.start) & (x < cols.stop)


def test_the_mouth_box_holds_the_lips_with_a_margin_and_not_the_eyes_or_chin(rig):
    rows, cols = box = mouth_box(rig.points)
    lips = rig.points[list(topo.OUTER_LIP_UPPER + topo.OUTER_LIP_LOWER)]
    width = np.ptp(lips[:, 0])
    assert inside(lips, box).all()
    assert lips[:, 0].min() - cols.start > 0.25 * width and cols.stop - lips[:, 0].max() > 0.25 * width
    assert not inside(rig.points[[topo.CHIN, *topo.EYE_LEFT_LOWER, *topo.EYE_RIGHT_LOWER]], box).any()
