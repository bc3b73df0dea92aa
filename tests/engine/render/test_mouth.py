"""The mouth as a viewer sees it: a clean closed line at rest, a smooth opening, lips that keep
their body, lower teeth only when the jaw drops far, FaceMesh still reading the opening, and the
exported graph drawing the same mouth."""

import cv2
import numpy as np
import pytest
import torch

from engine.face import topology as topo
from engine.motion import spec
from engine.render import mouth as mouth_module
from engine.render.lips import LUMA, LipColours
from engine.render.mouth import LAYERS, LOWER_TEETH_GAP, catmull_rom


def coeffs_of(*poses: dict) -> torch.Tensor:
    return torch.from_numpy(np.stack([spec.from_dict(p) for p in poses]))


def line_mask(size: int, path: np.ndarray, half: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    cv2.polylines(mask, [np.round(path * 16).astype(np.int32)], False, 1, 2 * half + 1, cv2.LINE_8, shift=4)
    return mask.astype(bool)


def test_no_dark_pixels_around_the_closed_lips_at_rest(rig, renderer):
    """The bundled photo smiles with its teeth showing: closing its lips must not leave the dark
    corners and teeth edges as slivers along the lip line (only the line itself may be dark)."""
    size, g, pts = renderer.size, rig.groups, rig.points
    with torch.no_grad():
        frame = renderer.frames(torch.zeros(1, spec.D))[0]
    around = np.zeros((size, size), np.uint8)
    cv2.fillPoly(around, [np.round(np.r_[pts[g["outer_lip_upper"]], pts[g["outer_lip_lower"]][::-1]]).astype(int)], 1)
    grow = int(0.04 * rig.face_width)  # and the skin just beyond the corners
    around = cv2.dilate(around, np.ones((3, 2 * grow + 1), np.uint8)).astype(bool)
    off_line = around & ~line_mask(size, pts[g["inner_lip_upper"]], 1)
    lips = LipColours.of(rig.image, rig).lips @ LUMA
    luma = frame.astype(np.float32) @ LUMA / 255
    assert (luma[off_line] < 0.6 * lips).sum() == 0, np.sort(luma[off_line])[:5]


def test_opening_is_a_smooth_spline_with_no_polygon_corners(rig, renderer):
    """The drawn boundary follows the dense spline, whose turn at any point stays small, where the
    landmark polygon it passes through turns sharply at some landmark."""
    mouth = renderer.mouth
    n = len(rig.groups["inner_lip_upper"])

    def max_turn(curve: np.ndarray) -> float:
        d = np.diff(curve, axis=0)
        angle = np.arctan2(d[:, 1], d[:, 0])
        return float(np.degrees(np.abs(np.diff(np.unwrap(angle)))).max())

    poses = [{"jawOpen": 0.5}, {"jawOpen": 0.9}, {"mouthSmile_L": 0.8, "mouthSmile_R": 0.8, "jawOpen": 0.4},
             {"mouthFunnel": 1.0, "jawOpen": 0.3}]
    coeffs = coeffs_of(*poses)
    lips = rig.points + np.tensordot(coeffs.numpy(), rig.basis, axes=1)  # (B, P, 2) landmark targets
    with torch.no_grad():
        upper, lower = (c.numpy() for c in mouth.contours(coeffs))
        cover = mouth.opening(coeffs)[:, 0].numpy()
    y0, _, x0, _ = mouth.box
    for i, pose in enumerate(poses):
        polygon = max(max_turn(lips[i][rig.groups[g]]) for g in ("inner_lip_upper", "inner_lip_lower"))
        spline = max(max_turn(upper[i]), max_turn(lower[i]))
        assert spline < 0.5 * polygon, (pose, spline, polygon)
        # What is drawn is that curve: coverage equals the area inside it (8x supersampled), up to the
        # rounded corners.
        outline = np.r_[upper[i], lower[i][::-1]] - [x0, y0]
        fine = np.zeros((cover.shape[1] * 8, cover.shape[2] * 8), np.uint8)
        cv2.fillPoly(fine, [np.round((outline * 8 + 3.5) * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
        area = fine.reshape(cover.shape[1], 8, cover.shape[2], 8).mean((1, 3))
        assert np.abs(area - cover[i]).sum() < 0.12 * area.sum(), pose
    assert np.allclose(catmull_rom(n, 4)[::4], np.eye(n)), "the spline passes through the landmarks"


def lip_thickness(renderer, rig, coeffs: dict, column: int, lip: str) -> float:
    """Rows of `column` that show the rest image's upper or lower lip band, not covered by the interior."""
    with torch.no_grad():
        c = coeffs_of(coeffs)
        flow = renderer.flow(c)[0, 1, :, column].numpy() * renderer.size / 2  # px
        cover = np.zeros(renderer.size)
        y0, y1, x0, _ = renderer.mouth.box
        cover[y0:y1] = renderer.mouth.opening(c)[0, 0, :, column - x0].numpy()
    source = np.arange(renderer.size) + flow
    g, pts = rig.groups, rig.points
    inner = np.interp(column, *pts[g["inner_lip_upper"]].T)
    outer = np.interp(column, *pts[g[f"outer_lip_{lip}"]].T)
    band = (source >= min(inner, outer)) & (source <= max(inner, outer))
    return float((band * (1 - cover)).sum())


@pytest.mark.parametrize("lip", ["upper", "lower"])
def test_lips_keep_their_thickness_as_the_jaw_opens(rig, renderer, lip):
    corners = rig.points[[topo.INNER_LIP_UPPER[0], topo.INNER_LIP_UPPER[-1]], 0]
    for t in (0.35, 0.5, 0.65):  # across the middle of the mouth
        column = round(corners[0] + t * (corners[1] - corners[0]))
        rest = lip_thickness(renderer, rig, {}, column, lip)
        open_ = lip_thickness(renderer, rig, {"jawOpen": 0.5}, column, lip)
        assert rest >= 2 and abs(open_ / rest - 1) <= 0.2, (lip, t, rest, open_)


def test_lower_teeth_show_only_past_their_threshold(renderer):
    mouth = renderer.mouth
    jaws = np.linspace(0.0, 1.0, 11)
    coeffs = coeffs_of(*({"jawOpen": float(j)} for j in jaws))
    with torch.no_grad():
        weights, _ = mouth.layers(coeffs)
        upper, lower = mouth.contours(coeffs)
    lower_teeth = weights[:, LAYERS.index("teeth_lower")].flatten(1).max(1).values.numpy()
    width = (upper[:, -1, 0] - upper[:, 0, 0]).numpy()
    opening = ((lower - upper)[:, :, 1].max(1).values.numpy()) / width
    assert (lower_teeth[opening <= LOWER_TEETH_GAP] == 0).all()
    assert (lower_teeth[opening > LOWER_TEETH_GAP + 0.05] > 0.3).all()
    assert lower_teeth[jaws <= 0.3].max() == 0 and lower_teeth[jaws >= 0.8].min() > 0.5, lower_teeth


def test_interior_colours_come_from_the_portrait():
    warm = LipColours(lips=np.array([0.8, 0.5, 0.5]), skin=np.array([0.85, 0.7, 0.6]))
    pale = LipColours(lips=np.array([0.7, 0.6, 0.65]), skin=np.array([0.7, 0.7, 0.75]))
    a, b = mouth_module.palette(warm, 1.0), mouth_module.palette(pale, 1.0)
    for layer in ("cavity_front", "tongue", "gum"):
        i = LAYERS.index(layer)
        assert a[i][0] - a[i][2] > b[i][0] - b[i][2], layer  # redder lips, redder mouth
    assert (a >= 0).all() and (a <= 1).all()


def test_facemesh_finds_the_face_and_follows_the_jaw(renderer):
    """What the lip-sync measurement reads: FaceMesh on the rendered frames finds the face in every
    one, and the inner-lip gap (13-14 over the outer eye corners' distance) grows with jawOpen."""
    from engine.face.analysis import detect_landmarks

    jaws = np.linspace(0.0, 0.9, 7)
    with torch.no_grad():
        frames = renderer.frames(coeffs_of(*({"jawOpen": float(j)} for j in jaws)))
    gaps = []
    for frame in frames:
        faces = detect_landmarks(frame)
        assert faces, "FaceMesh lost the face"
        lm = faces[0]
        gaps.append((lm[14, 1] - lm[13, 1]) / np.linalg.norm(lm[263, :2] - lm[33, :2]))
    gaps = np.array(gaps)
    assert (np.diff(gaps) > 0).all() and gaps[-1] - gaps[0] > 0.15, gaps.round(3)


# ONNX ops of opset 17 that TensorRT parses natively.
TENSORRT_OPS = {"Add", "Sub", "Mul", "Div", "Clip", "Min", "Max", "Abs", "Exp", "Pow", "Sqrt", "Reciprocal", "Neg",
                "MatMul", "Gemm", "Conv", "Concat", "Slice", "Reshape", "Unsqueeze", "Squeeze", "Transpose",
                "ReduceSum", "Less", "GreaterOrEqual", "Greater", "And", "Cast", "Constant", "Shape", "Gather",
                "Expand", "Where", "Equal", "ConstantOfShape", "Identity"}


def test_exported_mouth_matches_torch(renderer, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")

    class Paint(torch.nn.Module):  # the interior over its whole ROI, as the exported renderer runs it
        def __init__(self, mouth):
            super().__init__()
            self.mouth = mouth

        def forward(self, canvas, coeffs):
            return self.mouth(canvas, coeffs)

    mouth = renderer.mouth
    _, y1, _, x1 = mouth.box
    canvas = torch.rand(2, 3, y1, x1)
    coeffs = coeffs_of({"jawOpen": 0.8, "mouthFunnel": 0.4}, {"mouthSmile_L": 0.7, "mouthSmile_R": 0.7,
                                                                "jawOpen": 0.4})
    path = tmp_path / "mouth.onnx"
    torch.onnx.export(Paint(mouth).eval(), (canvas, coeffs), str(path), input_names=["canvas", "coeffs"],
                      output_names=["frame"], opset_version=17, dynamo=False)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert ops <= TENSORRT_OPS, sorted(ops - TENSORRT_OPS)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"canvas": canvas.numpy(), "coeffs": coeffs.numpy()})[0]
    with torch.no_grad():
        want = Paint(mouth)(canvas, coeffs).numpy()
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(want - canvas.numpy()).max() > 0.3  # it painted something


def test_bilabial_closure_shows_closed_lips_on_an_open_jaw(rig, renderer):
    """m, b, p: jawOpen with mouthClose as much keeps the lips together: no interior, and the lips
    look as they do at rest (mouthClose's flow is fitted on an open jaw, so the two flows add up)."""
    g, pts, size = rig.groups, rig.points, renderer.size
    coeffs = coeffs_of({}, {"jawOpen": 0.3, "mouthClose": 0.3})
    assert renderer.mouth.window(coeffs[1:]) is None
    with torch.no_grad():
        rest, closed = renderer.frames(coeffs).astype(np.float32) / 255
    lips = np.zeros((size, size), np.uint8)
    cv2.fillPoly(lips, [np.round(np.r_[pts[g["outer_lip_upper"]], pts[g["outer_lip_lower"]][::-1]]).astype(int)], 1)
    diff = np.abs(closed - rest)[lips.astype(bool)]
    assert diff.mean() < 0.02 and diff.max() < 0.2, (diff.mean(), diff.max())
