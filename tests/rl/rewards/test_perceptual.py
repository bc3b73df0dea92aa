import cv2
import numpy as np
import pytest

from rl.rewards import Sample
from rl.rewards.perceptual import PerceptualOptions, PerceptualTerm, face_mask


def _sample(clip, motions, frames, portrait):
    T = len(frames)
    return Sample(clip[0][: T * 640], clip[1][:T], motions["real"][:T], portrait=portrait, frames=frames)


def test_mask_covers_the_face_but_not_the_mouth(small_portrait):
    from engine.face import topology

    mask = face_mask(small_portrait.landmarks, 64, small_portrait.size, 0.12)
    lips = small_portrait.landmarks[list(topology.OUTER_LIP_LOWER), :2] * 64 / small_portrait.size
    eyes = small_portrait.landmarks[[33, 263], :2].mean(0) * 64 / small_portrait.size  # between the eye corners
    assert not mask[tuple(np.round(lips.mean(0)).astype(int)[::-1])]
    assert mask[tuple(np.round(eyes).astype(int)[::-1])]
    assert 0.03 < mask.mean() < 0.5  # the face is a third of the frame's width


def test_rendered_talking_keeps_identity_blur_and_repaint_do_not(clip, motions, rendered, small_portrait):
    frames = rendered["real"]
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 2.0) for f in frames])
    blurred[0] = frames[0]  # the reference frame stays sharp: the face went blurry while talking
    repainted = frames.copy()
    repainted[1:, :, :, 0] = np.clip(repainted[1:, :, :, 0].astype(int) + 50, 0, 255)  # the skin turns red
    cases = {"real": frames, "blurred": blurred, "repainted": repainted}
    result = PerceptualTerm()([_sample(clip, motions, f, small_portrait) for f in cases.values()])
    v = dict(zip(cases, result.values))
    d = {k: dict(zip(cases, x)) for k, x in result.diagnostics.items()}
    assert v["real"] > 0.8 and v["real"] > v["blurred"] + 0.2 and v["real"] > v["repainted"] + 0.1
    assert d["texture"]["blurred"] < 0.5 < d["texture"]["real"]
    assert d["l1"]["repainted"] > 2.5 * d["l1"]["real"]


def test_portrait_reference_and_the_mouth_left_out(clip, motions, rendered, small_portrait):
    from engine.face import topology

    frames = rendered["real"]
    lips = small_portrait.landmarks[list(topology.OUTER_LIP_UPPER + topology.OUTER_LIP_LOWER), :2]
    x0, y0 = np.floor(lips.min(0)).astype(int)
    x1, y1 = np.ceil(lips.max(0)).astype(int)
    mouthless = frames.copy()
    mouthless[:, y0:y1, x0:x1] = 0  # a black hole where the mouth is: not the perceptual term's business
    term = PerceptualTerm(PerceptualOptions(reference="portrait"))
    result = term([_sample(clip, motions, f, small_portrait) for f in (frames, mouthless)])
    assert result.values[0] > 0.7 and abs(result.values[0] - result.values[1]) < 0.02


def test_needs_frames_and_portrait(clip, motions):
    with pytest.raises(ValueError, match="rendered frames and its portrait"):
        PerceptualTerm()([Sample(clip[0], clip[1], motions["real"])])
