"""FaceMesh topology: named landmark groups and the triangle mesh.

Index lists follow mediapipe's 478-point FaceMesh (468 + 10 iris points with refined
landmarks). Contours run from the image-left end to the image-right end so that upper
and lower contours pair up point by point; "right"/"left" in names are the SUBJECT's,
as in ARKit and mediapipe (the subject's right eye is on the image's left).
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from functools import cache

import numpy as np

NUM_LANDMARKS = 478

# Lips: outer and inner contours, corners shared by upper and lower.
OUTER_LIP_UPPER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
OUTER_LIP_LOWER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
INNER_LIP_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
INNER_LIP_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)

# Eyelid contours (corner to corner, image-left to image-right).
EYE_RIGHT_UPPER = (33, 246, 161, 160, 159, 158, 157, 173, 133)
EYE_RIGHT_LOWER = (33, 7, 163, 144, 145, 153, 154, 155, 133)
EYE_LEFT_UPPER = (362, 398, 384, 385, 386, 387, 388, 466, 263)
EYE_LEFT_LOWER = (362, 382, 381, 380, 374, 373, 390, 249, 263)
IRIS_RIGHT = tuple(range(468, 473))
IRIS_LEFT = tuple(range(473, 478))

# Brows (upper edge, image-left to image-right).
BROW_RIGHT = (70, 63, 105, 66, 107, 46, 53, 52, 65, 55)
BROW_LEFT = (336, 296, 334, 293, 300, 285, 295, 282, 283, 276)

FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)

NOSE_TIP = 1
CHIN = 152
FOREHEAD = 10
CHEEK_RIGHT = 234  # widest face points, used for face width
CHEEK_LEFT = 454
NOSE_WING_RIGHT = (48, 64, 98, 129)
NOSE_WING_LEFT = (278, 294, 327, 358)


def ladder(upper: tuple[int, ...], lower: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """Triangles filling the opening between two contours that share their end points.

    Robust when the opening is closed (upper == lower in space), unlike a Delaunay fill.
    """
    tris = []
    for i in range(len(upper) - 1):
        u0, u1, l0, l1 = upper[i], upper[i + 1], lower[i], lower[i + 1]
        quad = [u0, u1, l1, l0]  # around the strip between two rungs; a corner collapses it to a triangle
        corners = list(dict.fromkeys(quad))
        if len(corners) == 3:
            tris.append(tuple(corners))
        else:
            tris += [(u0, u1, l0), (u1, l1, l0)]
    return tris


@cache
def mesh_triangles() -> np.ndarray:
    """(T, 3) triangles of the FaceMesh surface plus fills for the eye and mouth openings.

    mediapipe ships only the tessellation's edges; its triangles are the 3-cliques of that
    graph minus the two spurious ones across the nose wings (cliques whose every edge is
    already used by two other triangles). Winding is not fixed here: it depends on the
    landmark positions (see `orient`).
    """
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    edges = {tuple(sorted(e)) for e in FACEMESH_TESSELATION}
    adj = defaultdict(set)
    for a, b in edges:
        adj[a].add(b)
        adj[b].add(a)
    cliques = {tuple(sorted((a, b, c))) for a, b in edges for c in adj[a] & adj[b]}
    uses = Counter(e for t in cliques for e in itertools.combinations(t, 2))
    spurious = {t for t in cliques if all(uses[e] >= 3 for e in itertools.combinations(t, 2))}
    tris = sorted(cliques - spurious)
    tris += ladder(INNER_LIP_UPPER, INNER_LIP_LOWER)
    tris += ladder(EYE_RIGHT_UPPER, EYE_RIGHT_LOWER)
    tris += ladder(EYE_LEFT_UPPER, EYE_LEFT_LOWER)
    return np.array(tris, np.int32)


def orient(triangles: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Reorder each triangle so its signed area in image coordinates is non-negative."""
    p = points[triangles][..., :2]
    area = (p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1]) - (p[:, 1, 1] - p[:, 0, 1]) * (p[:, 2, 0] - p[:, 0, 0])
    out = triangles.copy()
    flip = area < 0
    out[flip] = out[flip][:, [0, 2, 1]]
    return out
