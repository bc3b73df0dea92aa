import numpy as np
import pytest

from engine.audio.frontend import LOOKAHEAD_SAMPLES, AudioFeatures, AudioFrontend, extract_features
from engine.audio.mel import log_mel
from engine.audio.prosody import prosody
from engine.timebase import MELS_PER_FRAME, N_MELS, SAMPLE_RATE, SAMPLES_PER_FRAME, frames_for_samples

FIELDS = ("mel", "energy", "f0", "voicing", "vad")


def assert_same(a: AudioFeatures, b: AudioFeatures):
    assert len(a) == len(b)
    for name in FIELDS:
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def speech(speak):
    return speak("Good morning. Shall we begin the lesson now?")


@pytest.mark.parametrize("with_vad", [True, False])
def test_random_block_sizes_equal_whole(speech, rng, with_vad):
    whole = extract_features(speech, with_vad=with_vad)
    frontend, parts, i = AudioFrontend(with_vad=with_vad), [], 0
    while i < len(speech):
        size = int(rng.integers(1, 3000))
        parts.append(frontend.push(speech[i : i + size]))
        i += size
    parts.append(frontend.flush())
    assert_same(AudioFeatures.concat(parts), whole)
    assert whole.mel.shape == (len(whole), MELS_PER_FRAME, N_MELS)
    if not with_vad:
        assert (whole.vad == 1).all()


@pytest.mark.parametrize("n", [0, 1, SAMPLES_PER_FRAME - 1, SAMPLES_PER_FRAME, SAMPLES_PER_FRAME + 1, 12345])
def test_frame_count(speech, n):
    assert len(extract_features(speech[:n], with_vad=False)) == frames_for_samples(n)


def test_frames_arrive_once_their_lookahead_is_in(speech):
    frontend = AudioFrontend()
    frames = 20
    got = len(frontend.push(speech[: frames * SAMPLES_PER_FRAME + LOOKAHEAD_SAMPLES]))
    assert got == frames
    assert frontend.frames_emitted == frames


def test_features_agree_with_the_extractors(speech):
    features = extract_features(speech)
    padded = np.pad(speech, (0, len(features) * SAMPLES_PER_FRAME - len(speech)))
    np.testing.assert_allclose(features.mel.reshape(-1, N_MELS), log_mel(padded), atol=1e-6)
    np.testing.assert_allclose(features.energy, prosody(speech)[0], atol=1e-6)
    assert features.vad.max() > 0.9


def test_slicing_and_concat(speech):
    features = extract_features(speech[: SAMPLE_RATE], with_vad=False)
    head, tail = features[:10], features[10:]
    assert len(head) == 10 and len(tail) == len(features) - 10
    assert_same(AudioFeatures.concat([head, tail]), features)
    assert len(AudioFeatures.concat([])) == 0
    with pytest.raises(TypeError, match="sliced by frame range"):
        features[3]


def test_reset_starts_a_new_stream(speech):
    frontend = AudioFrontend(with_vad=False)
    frontend.push(speech[:5000])
    frontend.reset()
    again = AudioFeatures.concat([frontend.push(speech), frontend.flush()])
    assert_same(again, extract_features(speech, with_vad=False))


def test_offline_features_go_through_in_windows_with_the_same_result(speech, monkeypatch):
    """extract_features pushes a window at a time (its scratch memory grew with the clip when pushed whole)."""
    import engine.audio.frontend as frontend_module

    frontend = AudioFrontend()
    whole = AudioFeatures.concat([frontend.push(speech), frontend.flush()])
    monkeypatch.setattr(frontend_module, "OFFLINE_WINDOW", 4321)
    assert_same(extract_features(speech), whole)
