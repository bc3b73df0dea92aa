from engine.face import topology as topo


def test_mesh_is_the_tessellation_plus_opening_fills():
    tris = topo.mesh_triangles()
    fills = len(topo.ladder(topo.INNER_LIP_UPPER, topo.INNER_LIP_LOWER)) + 2 * len(
        topo.ladder(topo.EYE_LEFT_UPPER, topo.EYE_LEFT_LOWER))
    assert len(tris) == 852 + fills
    assert len({tuple(sorted(t)) for t in tris.tolist()}) == len(tris)


def test_ladder_fills_between_contours_sharing_corners():
    assert topo.ladder((1, 2, 3, 4), (1, 5, 6, 4)) == [(1, 2, 5), (2, 3, 5), (3, 6, 5), (3, 4, 6)]


def test_contours_pair_up():
    for up, lo in [(topo.INNER_LIP_UPPER, topo.INNER_LIP_LOWER), (topo.OUTER_LIP_UPPER, topo.OUTER_LIP_LOWER),
                   (topo.EYE_LEFT_UPPER, topo.EYE_LEFT_LOWER), (topo.EYE_RIGHT_UPPER, topo.EYE_RIGHT_LOWER)]:
        assert len(up) == len(lo) and up[0] == lo[0] and up[-1] == lo[-1]
