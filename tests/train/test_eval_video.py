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


def test_the_reference_motion_keeps_everything_but_the_mouth_and_drives_the_jaw_with_the_phones():
    ref = eval_video.reference_opening(PHONES, FRAMES)
    rng = np.random.default_rng(0)
    motion = spec.clip(spec.neutral(FRAMES) + rng.uniform(0, 0.3, (FRAMES, spec.D)))
    out = eval_video.reference_motion(motion, ref)
    face = [i for i, c in enumerate(spec.COEFFS) if c.group not in ("jaw", "mouth")]
    np.testing.assert_array_equal(out[:, face], motion[:, face])  # head, eyes, brows: the same frames
    jaw, close = out[:, spec.index("jawOpen")], out[:, spec.index("mouthClose")]
    assert np.all(close == 0) and np.corrcoef(jaw, ref)[0, 1] > 0.999
    opening = np.clip(motion[:, spec.index("jawOpen")] - motion[:, spec.index("mouthClose")], 0, None)
    # the same width (to the clip at 0 where the reference shuts below the mean by more than it)
    assert jaw.std() == pytest.approx(opening.std(), rel=0.02) and jaw.mean() == pytest.approx(opening.mean(), rel=0.02)
    assert np.ptp(out[:, spec.index("mouthFunnel")]) == 0  # the other lip channels hold still


@pytest.mark.slow
def test_a_smooth_jaw_reads_as_smooth_as_the_rendered_reference_and_a_popping_one_does_not():
    """Against the reference rendered and read by FaceMesh the same way, a jaw that follows the phones scores ~1
    while the unrendered reference calls it rough (FaceMesh's reading noise), and a popping jaw still scores high."""
    renderer = Renderer(Rig(analyze_portrait(assets.DEFAULT_PORTRAIT, size=256))).eval()
    ref = eval_video.reference_opening(PHONES, FRAMES)
    motion = spec.neutral(FRAMES)
    motion[:, spec.index("jawOpen")] = 0.5 * ref

    def seen(m):
        return eval_video.filled(eval_video.measure_opening(eval_video.render(renderer, m.astype(np.float32))))

    def against_rendered(m):
        return eval_video.roughness_rendered(renderer, m, eval_video.measure_opening(eval_video.render(renderer, m)),
                                             ref)

    assert eval_video.roughness(seen(motion)) / eval_video.roughness(ref) > 1.3  # measured: 1.64
    assert against_rendered(motion) == pytest.approx(1.0, abs=0.1)
    popping = motion.copy()
    popping[::2, spec.index("jawOpen")] += 0.15
    assert against_rendered(popping) > 1.6  # measured: 2.8
    faceless = np.full(FRAMES, np.nan)  # FaceMesh found no face: no number, not a crash
    assert np.isnan(eval_video.roughness_rendered(renderer, motion, faceless, ref))
