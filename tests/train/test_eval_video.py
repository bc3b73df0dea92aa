import numpy as np
import pytest

from engine import assets
from engine.face.analysis import analyze_portrait
from engine.face.rig import Rig
from engine.motion import spec
from engine.render.renderer import Renderer
from train import eval_video
from train.synth.phones import SIL, Phone

# "mama papa": closed lips around open vowels, pauses at both ends
PHONES = (Phone(0.0, 0.4, SIL), Phone(0.4, 0.5, "M"), Phone(0.5, 0.7, "AA"), Phone(0.7, 0.8, "M"),
          Phone(0.8, 1.0, "AA"), Phone(1.0, 1.4, SIL), Phone(1.4, 1.5, "P"), Phone(1.5, 1.7, "AA"),
          Phone(1.7, 1.8, "P"), Phone(1.8, 2.0, "AA"), Phone(2.0, 2.6, SIL))
FRAMES = 65


def test_reference_opens_on_vowels_on_their_acoustic_boundaries_and_shuts_on_bilabials():
    ref = eval_video.reference_opening(PHONES, FRAMES)
    frame = lambda t: int(t * 25)  # noqa: E731
    assert ref[frame(0.6)] > 0.8 and ref[frame(1.6)] > 0.8
    assert ref[frame(0.45)] < 0.35 and ref[frame(0.2)] < 0.01
    assert ref[frame(0.48)] < ref[frame(0.52)]  # no anticipation: the vowel opens at its own onset


def test_a_mouth_that_follows_the_reference_scores_perfectly_and_faults_are_caught():
    ref = eval_video.reference_opening(PHONES, FRAMES)
    same = eval_video.score_video("x", "d", 0.1 * ref, PHONES, ref)
    assert same.r == pytest.approx(1.0) and same.lag_ms == 0 and same.roughness == pytest.approx(1.0)
    assert same.bilabial < 0.4 and same.silence < 0.05 and same.faces_found == 1.0
    late = eval_video.score_video("x", "d", np.roll(ref, 2), PHONES, ref)
    assert late.lag_ms == 80 and late.r < same.r
    popping = ref + 0.3 * (np.arange(FRAMES) % 2)  # a frame-to-frame flicker
    assert eval_video.score_video("x", "d", popping, PHONES, ref).roughness > 2
    stuck_open = eval_video.score_video("x", "d", ref + 0.5, PHONES, ref)
    assert stuck_open.bilabial > max(0.45, 2 * same.bilabial) and stuck_open.silence > 0.4
    missing = np.where(np.arange(FRAMES) % 7 == 0, np.nan, ref)  # frames without a face are filled in
    assert eval_video.score_video("x", "d", missing, PHONES, ref).faces_found < 1


@pytest.mark.slow
def test_the_mouth_measured_in_rendered_frames_follows_jaw_open():
    renderer = Renderer(Rig(analyze_portrait(assets.DEFAULT_PORTRAIT, size=256))).eval()
    motion = spec.neutral(4)
    motion[:, spec.index("jawOpen")] = [0.0, 0.3, 0.6, 0.9]
    opening = eval_video.measure_opening(eval_video.render(renderer, motion))
    assert np.isfinite(opening).all() and np.all(np.diff(opening) > 0)
