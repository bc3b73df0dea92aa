import cv2
import numpy as np
import pytest
import torch

from engine.motion import spec
from engine.render.renderer import Renderer, _identity, to_uint8
from engine.render.warp import FlowRasterizer


def render(renderer, **coeffs) -> np.ndarray:
    """One frame as float RGB (S, S, 3) in [0, 1]."""
    with torch.no_grad():
        frame = renderer(torch.from_numpy(spec.from_dict(coeffs))[None])
    return frame[0].permute(1, 2, 0).numpy()


def luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


def polygon_mask(size: int, *contours: np.ndarray) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(np.concatenate(contours)).astype(np.int32)], 1)
    return mask.astype(bool)


def box_of(points: np.ndarray, grow: float = 0.0) -> tuple[slice, slice]:
    (x0, y0), (x1, y1) = points.min(0) - grow, points.max(0) + grow
    return slice(int(y0), int(np.ceil(y1)) + 1), slice(int(x0), int(np.ceil(x1)) + 1)


def test_neutral_reproduces_the_portrait(rig, renderer):
    rest = render(renderer)
    assert np.abs(rest - renderer.image[0].permute(1, 2, 0).numpy()).max() < 1e-4  # the rest image, exactly
    # The rest image is the photo except where the rig closes the photo's lips.
    size = rig.image.shape[0]
    moved = FlowRasterizer(rig, size, source=rig.source_points).rest
    unmoved = (np.linalg.norm(moved, axis=1) < 0.05).reshape(size, size)
    assert unmoved.mean() > 0.6
    err = ((rest * 255 - rig.image)[unmoved] ** 2).mean()
    assert 10 * np.log10(255**2 / max(err, 1e-12)) > 35


def test_jaw_open_moves_the_mouth_and_leaves_the_frame_edges(rig, renderer):
    rest, open_ = render(renderer), render(renderer, jawOpen=0.6)
    lips = np.r_[rig.groups["outer_lip_upper"], rig.groups["outer_lip_lower"]]
    mouth = box_of(rig.points[lips], grow=5)
    assert np.abs(open_ - rest)[mouth].mean() > 0.05
    corner = 40
    for ys, xs in [(slice(0, corner), slice(0, corner)), (slice(0, corner), slice(-corner, None)),
                   (slice(-corner, None), slice(0, corner)), (slice(-corner, None), slice(-corner, None))]:
        assert np.abs(open_ - rest)[ys, xs].max() <= 1 / 255
    chin = rig.points[rig.groups["face_oval"], 1].max()
    shoulders = slice(int(chin + 0.35 * rig.face_width), None)
    assert np.abs(open_ - rest)[shoulders].max() <= 1 / 255


def test_mouth_interior_shows_only_when_the_lips_part(rig, renderer):
    up, lo = rig.groups["inner_lip_upper"], rig.groups["inner_lip_lower"]
    size = rig.image.shape[0]
    with torch.no_grad():
        assert renderer.mouth.opening(torch.zeros(1, spec.D)).max() == 0
        assert renderer.mouth.opening(torch.from_numpy(spec.from_dict({"jawOpen": 0.1}))[None]).max() > 0.5
    coeffs = spec.from_dict({"jawOpen": 0.7})
    target = rig.points + np.tensordot(coeffs, rig.basis, axes=1)
    inside = polygon_mask(size, target[up], target[lo][::-1])
    inside = cv2.erode(inside.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    frame, rest = render(renderer, jawOpen=0.7), render(renderer)
    dark = luma(frame[inside]) < 0.3
    assert dark.mean() > 0.2, "an open mouth shows a dark cavity (the tongue and lower teeth fill the rest)"
    assert (luma(frame[inside]) > 0.6).mean() > 0.05, "and some teeth"
    rest_inside = polygon_mask(size, rig.points[up], rig.points[lo][::-1])
    assert (luma(rest[rest_inside]) < 0.3).sum() <= (luma(rig.image[rest_inside] / 255) < 0.3).sum() + 2


@pytest.mark.parametrize("side", ["left", "right"])
def test_blink_covers_the_eye_with_lid_skin(rig, renderer, side):
    g = rig.groups
    eye = np.r_[g[f"eye_{side}_upper"], g[f"eye_{side}_lower"]]
    iris = rig.points[468:473] if side == "right" else rig.points[473:478]
    centre, radius = iris[0], np.linalg.norm(iris[1:] - iris[0], axis=1).mean()
    size = rig.image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size]
    pupil = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 < (0.6 * radius) ** 2
    upper, lower = rig.points[g[f"eye_{side}_upper"]], rig.points[g[f"eye_{side}_lower"]]
    pupil &= polygon_mask(size, upper, lower[::-1])
    # Lid skin: a band above the upper lid, below the brow.
    top = rig.points[g[f"eye_{side}_upper"]]
    lid = box_of(top - [0, 0.06 * rig.face_width])
    rest, closed = render(renderer), render(renderer, eyeBlink_L=1.0, eyeBlink_R=1.0)
    skin = np.median(rest[lid].reshape(-1, 3), axis=0)
    before = np.abs(rest[pupil] - skin).mean()
    after = np.abs(closed[pupil] - skin).mean()
    assert pupil.sum() > 10
    assert after < 0.4 * before, f"the pupil should turn into lid skin: distance {before:.3f} -> {after:.3f}"
    assert (luma(closed[pupil]) < 0.25).mean() < 0.05, "no dark iris pixels left"
    eye_box = box_of(rig.points[eye], grow=2)
    assert np.abs(closed - rest)[eye_box].mean() > 0.03


def test_warp_is_one_sample_of_the_image_at_p_plus_flow(renderer):
    """The warp samples the frame in pieces around the detail box, from a grid with the
    identity folded in before upsampling: it must equal the plain formula, edges included."""
    coeffs = torch.from_numpy(np.stack([spec.neutral(), spec.from_dict({"jawOpen": 0.8, "headYaw": 0.12,
                                                                        "eyeBlink_L": 1.0, "headPitch": -0.1})]))
    with torch.no_grad():
        flow = renderer.flow(coeffs)
        grid = _identity(renderer.size) + flow.permute(0, 2, 3, 1)
        direct = torch.nn.functional.grid_sample(renderer.image.expand(2, -1, -1, -1), grid, mode="bilinear",
                                                 padding_mode="border", align_corners=False)
        warped = renderer.warp(coeffs)
    assert flow[0].abs().max() < 1e-6, "the rest pose is the identity at every pixel"
    assert (warped - direct).abs().max() < 1e-4


def test_batch_matches_single_frames(renderer):
    rng = np.random.default_rng(0)
    coeffs = spec.LOW + (spec.HIGH - spec.LOW) * rng.uniform(size=(3, spec.D)).astype(np.float32) * 0.4
    coeffs[:, spec.index("jawOpen")] = [0.0, 0.4, 0.9]
    batch = torch.from_numpy(coeffs.astype(np.float32))
    with torch.no_grad():
        together = renderer(batch)
        for i in range(len(batch)):
            assert torch.allclose(together[i], renderer(batch[i : i + 1])[0], atol=1e-5)


def test_traces_without_python_control_flow(renderer):
    example = torch.from_numpy(spec.neutral(2))[:, :]
    other = torch.from_numpy(np.stack([spec.from_dict({"jawOpen": 0.5, "headYaw": 0.1}),
                                       spec.from_dict({"eyeBlink_L": 1.0, "mouthSmile_R": 0.7})]))
    with torch.no_grad():
        traced = torch.jit.trace(renderer, example, check_trace=False)
        assert torch.allclose(traced(other), renderer(other), atol=1e-5)


def test_to_uint8_gives_rgb_frames(renderer):
    with torch.no_grad():
        frames = to_uint8(renderer(torch.zeros(2, spec.D)))
    assert frames.shape == (2, renderer.size, renderer.size, 3) and frames.dtype == np.uint8


# Poses that exercise every part of the uint8 path: rest, speech, a blink, a turned head, a smile.
POSES = [{}, {"jawOpen": 0.3}, {"jawOpen": 0.8, "mouthFunnel": 0.4}, {"eyeBlink_L": 1.0, "eyeBlink_R": 0.6},
         {"jawOpen": 0.5, "headYaw": 0.3, "headPitch": -0.2}, {"mouthSmile_L": 0.7, "mouthSmile_R": 0.7}]


def test_frames_match_the_float_graph_rounded(renderer):
    coeffs = torch.from_numpy(np.stack([spec.from_dict(p) for p in POSES]))
    with torch.no_grad():
        want, got = to_uint8(renderer(coeffs)).astype(int), renderer.frames(coeffs).astype(int)
    assert got.shape == want.shape and renderer.frames(coeffs).dtype == np.uint8
    diff = np.abs(got - want)
    # remap places samples to 1/32 px: a level or so at sharp edges, nothing on average
    assert diff.max() <= 6 and diff.mean() < 0.1, (diff.max(), diff.mean())
    assert (diff > 2).mean() < 1e-3


def test_mouth_window_paints_exactly_what_the_whole_roi_does(renderer):
    mouth = renderer.mouth
    canvas = torch.rand(1, 3, renderer.size, renderer.size)
    with torch.no_grad():
        for pose in POSES:
            coeffs = torch.from_numpy(spec.from_dict(pose))[None]
            window, whole = mouth.window(coeffs), mouth(canvas, coeffs)
            if window is None:  # lips touch everywhere: the whole-ROI paint changes nothing
                assert torch.equal(whole, canvas), pose
            else:
                assert torch.allclose(mouth(canvas, coeffs, window=window), whole, atol=1e-6), pose
                assert (window[1] - window[0]) * (window[3] - window[2]) < 0.6 * mouth.xs.numel() * mouth.ys.numel()
    assert mouth.window(torch.from_numpy(spec.from_dict({"jawOpen": 0.3}))[None]) is not None


def test_a_lid_left_out_would_change_nothing_visible(renderer):
    canvas = torch.rand(1, 3, renderer.size, renderer.size)
    with torch.no_grad():
        for value in (0.0, *np.geomspace(1e-4, 0.3, 14), 1.0):  # through the threshold
            coeffs = torch.from_numpy(spec.from_dict({"eyeBlink_L": value, "eyeBlink_R": value}))[None]
            for eyelid in renderer.eyelids:
                change = (eyelid(canvas, coeffs) - canvas).abs().max().item()
                if eyelid.visible(coeffs):
                    assert value > 0
                else:
                    assert change <= 0.25 / 255, (value, change)
        shut = torch.from_numpy(spec.from_dict({"eyeBlink_L": 1.0, "eyeBlink_R": 1.0}))[None]
        assert all(eyelid.visible(shut) for eyelid in renderer.eyelids)


def test_rejects_a_flow_size_that_does_not_divide_the_frame(rig):
    with pytest.raises(ValueError, match="flow_size"):
        Renderer(rig, flow_size=100)


# ATen ops with a direct ONNX opset-17 / TensorRT counterpart (grid_sampler is 4-D GridSample).
EXPORTABLE = {
    "mul", "slice", "sub", "add", "clamp", "unsqueeze", "div", "rsub", "sum", "view", "cat", "ge", "lt", "__and__",
    "_assert_tensor_metadata", "to", "rsqrt", "matmul", "minimum", "select", "permute", "grid_sampler", "abs",
    "conv2d", "index_select", "upsample_bilinear2d", "neg", "exp", "pad", "expand", "pow", "reshape", "maximum",
}


def test_exports_as_one_graph_of_standard_ops(renderer):
    program = torch.export.export(renderer, (torch.zeros(2, spec.D),))
    ops = {str(n.target).split(".")[1] for n in program.graph.nodes if n.op == "call_function"}
    assert ops <= EXPORTABLE, f"ops without a plain ONNX/TensorRT counterpart: {sorted(ops - EXPORTABLE)}"
    grids = [n for n in program.graph.nodes if n.op == "call_function" and "grid_sampler" in str(n.target)]
    assert all(len(n.args[0].meta["val"].shape) == 4 for n in grids), "only 4-D grid_sample"
