import numpy as np
import pytest

from engine.audio.prosody import ENERGY_FLOOR_DB, StreamingProsody, prosody
from engine.timebase import SAMPLE_RATE, frames_for_samples

T = np.arange(SAMPLE_RATE) / SAMPLE_RATE  # one second


@pytest.mark.parametrize("f0", [65.0, 98.0, 140.0, 220.0, 310.0, 390.0])
@pytest.mark.parametrize("harmonics", [1, 8])
def test_tone_f0_within_two_percent(f0, harmonics):
    x = sum(np.sin(2 * np.pi * f0 * k * T) / k for k in range(1, harmonics + 1))
    energy, f0s, voicing = prosody((0.3 * x).astype(np.float32))
    inner = slice(2, -2)  # the first and last frames see the zero padding
    np.testing.assert_allclose(f0s[inner], f0, rtol=0.02)
    assert voicing[inner].min() > 0.9


def test_energy_is_rms_dbfs():
    energy, _, _ = prosody((0.5 * np.sin(2 * np.pi * 200 * T)).astype(np.float32))
    np.testing.assert_allclose(energy[1:-1], 20 * np.log10(0.5 / np.sqrt(2)), atol=0.05)
    quiet, _, _ = prosody((0.05 * np.sin(2 * np.pi * 200 * T)).astype(np.float32))
    np.testing.assert_allclose(energy[1:-1] - quiet[1:-1], 20.0, atol=1e-3)


def test_noise_and_silence_are_unvoiced(rng):
    noise = (0.1 * rng.standard_normal(2 * SAMPLE_RATE)).astype(np.float32)
    _, f0, voicing = prosody(noise)
    assert (f0 > 0).mean() < 0.05 and voicing.mean() < 0.35
    energy, f0, voicing = prosody(np.zeros(SAMPLE_RATE, np.float32))
    assert (energy == ENERGY_FLOOR_DB).all() and (f0 == 0).all() and (voicing == 0).all()


def test_onset_after_silence_is_not_a_false_pitch(rng):
    x = np.zeros(SAMPLE_RATE, np.float32)
    x[10000:] = 0.1 * rng.standard_normal(SAMPLE_RATE - 10000)
    assert (prosody(x)[1] == 0).all()


def test_chunked_equals_whole(rng):
    x = (0.3 * np.sin(2 * np.pi * 150 * T * (1 + 0.3 * T)) + 0.02 * rng.standard_normal(len(T))).astype(np.float32)
    whole = prosody(x)
    assert all(len(a) == frames_for_samples(len(x)) for a in whole)
    stream, parts, i = StreamingProsody(), [], 0
    for size in rng.integers(0, 1500, 30):
        parts.append(stream.push(x[i : i + size]))
        i += size
    parts += [stream.push(x[i:]), stream.flush()]
    for a, b in zip(whole, (np.concatenate(p) for p in zip(*parts))):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_speech_is_mostly_voiced(speak):
    x = speak("We were away a year ago, when all our lemon trees were in bloom.")
    energy, f0, voicing = prosody(x)
    loud = energy > energy.max() - 25
    assert (f0[loud] > 0).mean() > 0.6
    assert 70 < np.median(f0[f0 > 0]) < 250  # espeak-ng's default voice speaks around 100-130 Hz
    assert voicing[loud].mean() > 0.6
