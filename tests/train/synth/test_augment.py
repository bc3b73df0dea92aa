import numpy as np
import pytest

from engine.timebase import SAMPLE_RATE
from train.synth import augment as aug


@pytest.fixture
def speechlike():
    """A second of a 150 Hz buzz with a syllable-rate envelope, then silence."""
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    x = 0.3 * np.sign(np.sin(2 * np.pi * 150 * t)) * np.clip(np.sin(2 * np.pi * 4 * t), 0, 1)
    return np.concatenate([x, np.zeros(SAMPLE_RATE // 2)]).astype(np.float32)


def _snr_db(clean, noisy):
    clean = clean.astype(np.float64)
    return 10 * np.log10(np.mean(clean**2) / np.mean((noisy - clean) ** 2))


@pytest.mark.parametrize("color", ["white", "pink"])
@pytest.mark.parametrize("snr_db", [0.0, 10.0, 30.0])
def test_noise_lands_at_the_requested_snr(speechlike, color, snr_db):
    noisy = aug.add_noise(speechlike, np.random.default_rng(0), snr_db, color)
    assert abs(_snr_db(speechlike, noisy) - snr_db) < 1.0


def test_pink_noise_has_more_power_low_than_high():
    n = aug.noise(SAMPLE_RATE * 4, np.random.default_rng(0), "pink")
    power = np.abs(np.fft.rfft(n)) ** 2
    f = np.fft.rfftfreq(len(n), 1 / SAMPLE_RATE)
    low, high = power[(f > 100) & (f < 200)].mean(), power[(f > 3200) & (f < 6400)].mean()
    assert 10 * np.log10(low / high) > 10  # ~15 dB expected over 5 octaves at 3 dB per octave


def test_every_augmentation_keeps_length_dtype_and_range(speechlike):
    rng = np.random.default_rng(1)
    outputs = [
        aug.add_noise(speechlike, rng, 5), aug.reverb(speechlike, rng, 0.5, 0.5), aug.equalize(speechlike, rng),
        aug.gain(speechlike, 20.0), aug.telephone(speechlike), *[aug.augment(speechlike, rng) for _ in range(20)],
    ]
    for out in outputs:
        assert out.shape == speechlike.shape and out.dtype == np.float32
        assert np.all(np.abs(out) <= 1.0) and np.all(np.isfinite(out))


def test_reverb_smears_energy_into_the_silence(speechlike):
    wet = aug.reverb(speechlike, np.random.default_rng(0), rt60_s=0.6, wet=0.6)
    tail = slice(SAMPLE_RATE, SAMPLE_RATE + SAMPLE_RATE // 10)  # the first 100 ms after the sound stops
    assert np.sqrt(np.mean(wet[tail] ** 2)) > 1e-3 > np.sqrt(np.mean(speechlike[tail] ** 2))


def test_telephone_removes_the_band_above_4khz():
    rng = np.random.default_rng(0)
    white = (0.1 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32)
    out = aug.telephone(white)
    f = np.fft.rfftfreq(len(out), 1 / SAMPLE_RATE)
    spectrum = np.abs(np.fft.rfft(out)) ** 2
    assert spectrum[f > 4500].mean() < 1e-3 * spectrum[f < 3000].mean()


def test_augment_is_deterministic_per_seed_and_varies_across_seeds(speechlike):
    a = aug.augment(speechlike, np.random.default_rng(7))
    b = aug.augment(speechlike, np.random.default_rng(7))
    c = aug.augment(speechlike, np.random.default_rng(8))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
