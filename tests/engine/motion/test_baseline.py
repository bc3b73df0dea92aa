import numpy as np
import pytest

from engine.audio.frontend import AudioFeatures, extract_features
from engine.motion import spec
from engine.motion.baseline import BLINK_MIN_GAP_S, EMOTION_OFFSETS, EMOTIONS, BaselineDriver, BaselineOptions
from engine.timebase import FPS, SAMPLE_RATE

SENTENCE = "Hello there. The weather is lovely today, and I am happy to talk with you. Would you like some tea?"


def column(motion, name):
    return motion[:, spec.index(name)]


def blink_onsets(motion):
    closed = column(motion, "eyeBlink_L") >= 1.0
    return np.flatnonzero(np.diff(closed.astype(int)) == 1)


def drive(features, **options):
    return BaselineDriver(BaselineOptions(**options)).drive(features)


@pytest.fixture(scope="module")
def speech(speak):
    """Features of 1 s silence, an espeak sentence, 1 s silence."""
    pause = np.zeros(SAMPLE_RATE, np.float32)
    return extract_features(np.concatenate([pause, speak(SENTENCE), pause]))


@pytest.fixture(scope="module")
def silence():
    return extract_features(np.zeros(60 * SAMPLE_RATE, np.float32))


def test_silence_keeps_the_mouth_closed_and_blinks(silence):
    motion = drive(silence)
    assert column(motion, "jawOpen").max() < 0.01
    assert column(motion, "mouthClose").max() < 0.1
    onsets = blink_onsets(motion)
    assert 10 <= len(onsets) <= 26  # per minute
    assert np.diff(onsets).min() >= BLINK_MIN_GAP_S * FPS
    np.testing.assert_array_equal(column(motion, "eyeBlink_L"), column(motion, "eyeBlink_R"))
    closing = column(motion, "eyeBlink_L")[onsets[0] - 1 : onsets[0] + 6]
    assert closing[0] < 1.0 and (closing > 0).sum() <= 6  # a blink is over within ~250 ms


def test_jaw_follows_speech_energy(speech):
    motion = drive(speech)
    jaw = column(motion, "jawOpen")
    assert np.corrcoef(jaw, speech.energy)[0, 1] > 0.5
    assert 0.45 <= jaw.max() <= 0.75  # clearly readable on video
    assert jaw[: FPS - 2].max() < 0.01 and jaw[-FPS // 2 :].max() < 0.01  # closed before and after speaking
    assert (column(motion, "mouthLowerDown_L") <= jaw).all()


def test_blink_rate_while_speaking(speech):
    minute = AudioFeatures.concat([speech] * (-(-60 * FPS // len(speech))))[: 60 * FPS]
    rates = [len(blink_onsets(drive(minute, seed=seed))) for seed in range(4)]
    assert 10 <= np.mean(rates) <= 26


def test_vowel_shapes_follow_the_spectrum(speak):
    rounded = drive(extract_features(speak("moo, who, boo, two, shoe.")))
    front = drive(extract_features(speak("me, see, bee, key, tea.")))
    assert column(rounded, "mouthPucker").mean() > 2 * column(front, "mouthPucker").mean()
    assert column(front, "mouthStretch_L").mean() > 2 * column(rounded, "mouthStretch_L").mean()


def test_happy_raises_smile(speech):
    happy, neutral = drive(speech, emotion="happy"), drive(speech)
    assert column(happy, "mouthSmile_L").mean() > column(neutral, "mouthSmile_L").mean() + 0.3


@pytest.mark.parametrize("emotion", [e for e in EMOTIONS if e != "neutral"])
def test_every_emotion_shows(silence, emotion):
    quiet = silence[: 5 * FPS]
    motion, neutral = drive(quiet, emotion=emotion), drive(quiet)
    for name, value in EMOTION_OFFSETS[emotion].items():
        if not name.startswith("eyeBlink"):
            assert np.median(column(motion, name) - column(neutral, name)) == pytest.approx(value, abs=0.02), name


def test_emphasis_raises_brows_and_speech_moves_the_head_more(speech, silence):
    motion, idle = drive(speech), drive(silence[: len(speech)])
    assert column(motion, "browInnerUp").max() > 0.1 and column(idle, "browInnerUp").max() == 0
    assert column(motion, "headYaw").std() > column(idle, "headYaw").std()
    assert np.abs(motion[:, [spec.index(n) for n in ("headYaw", "headPitch", "headRoll")]]).max() < np.radians(10)


def test_deterministic_per_seed(speech):
    a, b, c = drive(speech, seed=3), drive(speech, seed=3), drive(speech, seed=4)
    np.testing.assert_array_equal(a, b)
    assert np.abs(column(a, "headYaw") - column(c, "headYaw")).max() > 1e-3


def test_chunked_step_equals_whole(speech, rng):
    whole = drive(speech, seed=7, emotion="surprise")
    driver, parts, i = BaselineDriver(BaselineOptions(seed=7, emotion="surprise")), [], 0
    while i < len(speech):
        size = int(rng.integers(0, 30))
        parts.append(driver.step(speech[i : i + size]))
        i += size
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-6)


def test_live_emotion_change_eases_in(silence):
    driver = BaselineDriver(BaselineOptions())
    before = driver.step(silence[:50])
    driver.set_options(BaselineOptions(emotion="happy", seed=99))
    smile = column(driver.step(silence[50:100]), "mouthSmile_L")
    assert column(before, "mouthSmile_L").max() == 0
    assert 0 < smile[0] < 0.3 and smile[-1] == pytest.approx(EMOTION_OFFSETS["happy"]["mouthSmile_L"], abs=0.01)
    assert np.diff(smile).min() >= 0
    assert driver.options.seed == 0  # the stream's random processes are not re-seeded


@pytest.mark.parametrize("emotion", EMOTIONS)
def test_outputs_within_bounds(speech, emotion):
    motion = drive(speech, emotion=emotion, expressiveness=2.0, head_motion=3.0)
    assert motion.shape == (len(speech), spec.D) and motion.dtype == np.float32
    assert (motion >= spec.LOW).all() and (motion <= spec.HIGH).all()


def test_scales_switch_motion_off(speech):
    still = drive(speech, expressiveness=0.0, head_motion=0.0)
    moving = [n for n in spec.NAMES if n not in ("eyeBlink_L", "eyeBlink_R")]
    assert np.abs(still[:, [spec.index(n) for n in moving]]).max() == 0


@pytest.mark.parametrize(
    "options, message",
    [
        ({"emotion": "joyful"}, "emotion must be one of angry, disgust"),
        ({"expressiveness": 3.0}, r"expressiveness must be in \[0, 2\]"),
        ({"head_motion": -1.0}, r"head_motion must be in \[0, 3\]"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"seed": 1.5}, "seed must be a non-negative integer"),
    ],
)
def test_bad_option_is_a_clear_error(options, message):
    with pytest.raises(ValueError, match=message):
        BaselineOptions(**options)
