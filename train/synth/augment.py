"""Seeded augmentations of 16 kHz float32 speech, so a model trained on TTS hears rooms, mics and lines.

    rng = np.random.default_rng(seed)
    noisy = add_noise(samples, rng, snr_db=15, color="pink")
    out = augment(samples, rng)          # a random chain of the ones below

Every function returns float32 audio of the same length as its input, within [-1, 1], and draws all
its randomness from the `rng` it is given (same rng state, same output).
"""

from __future__ import annotations

from enum import Enum

import numpy as np
from scipy.signal import fftconvolve, lfilter, resample_poly

from engine.timebase import SAMPLE_RATE

_EPS = 1e-12


class NoiseColor(str, Enum):
    WHITE = "white"  # flat spectrum: hiss
    PINK = "pink"  # power falls 3 dB per octave: fans, traffic, room tone


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


def _finish(x: np.ndarray) -> np.ndarray:
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def noise(n: int, rng: np.random.Generator, color: NoiseColor | str = NoiseColor.WHITE) -> np.ndarray:
    """(n,) float64 noise of unit power."""
    color = NoiseColor(color)
    white = rng.standard_normal(n)
    if color is NoiseColor.PINK and n > 1:
        spectrum = np.fft.rfft(white)
        f = np.fft.rfftfreq(n)
        f[0] = f[1]  # no infinite DC gain
        white = np.fft.irfft(spectrum / np.sqrt(f), n)
    return white / np.sqrt(max(_power(white), _EPS))


def add_noise(samples: np.ndarray, rng: np.random.Generator, snr_db: float,
              color: NoiseColor | str = NoiseColor.WHITE) -> np.ndarray:
    """Add noise at `snr_db` dB below the clip's mean power (silence included, so speech is a bit louder)."""
    x = np.asarray(samples, np.float64)
    scale = np.sqrt(_power(x) / 10.0 ** (snr_db / 10.0))
    return _finish(x + scale * noise(len(x), rng, color))


def reverb(samples: np.ndarray, rng: np.random.Generator, rt60_s: float, wet: float = 0.5) -> np.ndarray:
    """A room: convolve with exponentially decaying noise (60 dB down after rt60_s), mixed `wet` with the
    direct sound; the output keeps the input's RMS."""
    if not 0.0 <= wet <= 1.0 or rt60_s <= 0:
        raise ValueError(f"reverb needs rt60_s > 0 and wet in [0, 1]; got rt60_s={rt60_s}, wet={wet}")
    x = np.asarray(samples, np.float64)
    t = np.arange(max(int(rt60_s * SAMPLE_RATE), 1)) / SAMPLE_RATE
    tail = rng.standard_normal(len(t)) * np.exp(-np.log(1000.0) * t / rt60_s)  # 60 dB = a factor 1000 in amplitude
    tail /= np.sqrt(np.sum(tail**2)) + _EPS
    ir = wet * tail
    ir[0] += 1.0 - wet
    y = fftconvolve(x, ir)[: len(x)]
    return _finish(y * np.sqrt(_power(x) / max(_power(y), _EPS)))


def _biquad_peak(freq_hz: float, gain_db: float, q: float) -> tuple[np.ndarray, np.ndarray]:
    """A peaking-EQ biquad (b, a): `gain_db` at `freq_hz`, width set by q, unity far from it."""
    a_lin = 10.0 ** (gain_db / 40.0)
    w = 2 * np.pi * freq_hz / SAMPLE_RATE
    alpha = np.sin(w) / (2 * q)
    b = np.array([1 + alpha * a_lin, -2 * np.cos(w), 1 - alpha * a_lin])
    a = np.array([1 + alpha / a_lin, -2 * np.cos(w), 1 - alpha / a_lin])
    return b / a[0], a / a[0]


def _biquad_shelf(freq_hz: float, gain_db: float, high: bool) -> tuple[np.ndarray, np.ndarray]:
    """A shelving biquad (b, a) with slope 1: `gain_db` above (high) or below freq_hz."""
    A = 10.0 ** (gain_db / 40.0)
    w = 2 * np.pi * freq_hz / SAMPLE_RATE
    cos, alpha = np.cos(w), np.sin(w) / np.sqrt(2.0)
    root = 2 * np.sqrt(A) * alpha
    s = -1.0 if high else 1.0  # the high shelf is the low shelf with the cos terms' signs flipped
    b = A * np.array([(A + 1) - s * (A - 1) * cos + root, s * 2 * ((A - 1) - s * (A + 1) * cos),
                      (A + 1) - s * (A - 1) * cos - root])
    a = np.array([(A + 1) + s * (A - 1) * cos + root, -s * 2 * ((A - 1) + s * (A + 1) * cos),
                  (A + 1) + s * (A - 1) * cos - root])
    return b / a[0], a / a[0]


def equalize(samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random microphone colour: a peak or dip (200 Hz-5 kHz, +-9 dB) or a tilt (a +-6 dB shelf);
    the output keeps the input's RMS."""
    x = np.asarray(samples, np.float64)
    if rng.random() < 0.5:
        b, a = _biquad_peak(float(np.exp(rng.uniform(np.log(200), np.log(5000)))), rng.uniform(-9, 9),
                            rng.uniform(0.5, 2.0))
    else:
        high = bool(rng.random() < 0.5)
        b, a = _biquad_shelf(rng.uniform(800, 3000) if high else rng.uniform(150, 600), rng.uniform(-6, 6), high)
    y = lfilter(b, a, x)
    return _finish(y * np.sqrt(_power(x) / max(_power(y), _EPS)))


def gain(samples: np.ndarray, gain_db: float) -> np.ndarray:
    """Louder or quieter; what exceeds full scale clips, like a hot microphone."""
    return _finish(np.asarray(samples, np.float64) * 10.0 ** (gain_db / 20.0))


def telephone(samples: np.ndarray, down_hz: int = 8000) -> np.ndarray:
    """Resampling artefacts: down to `down_hz` and back up (everything above down_hz / 2 is lost)."""
    x = np.asarray(samples, np.float64)
    y = resample_poly(resample_poly(x, down_hz, SAMPLE_RATE), SAMPLE_RATE, down_hz)
    y = np.pad(y, (0, max(len(x) - len(y), 0)))[: len(x)]
    return _finish(y)


def augment(samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random chain: EQ (50%), reverb (35%), telephone band (15%), noise at 0-40 dB SNR (70%), then gain
    of -12..+6 dB (always). About one clip in ten comes out with only a gain change."""
    x = np.asarray(samples, np.float32)
    if rng.random() < 0.5:
        x = equalize(x, rng)
    if rng.random() < 0.35:
        x = reverb(x, rng, rt60_s=rng.uniform(0.15, 0.8), wet=rng.uniform(0.2, 0.7))
    if rng.random() < 0.15:
        x = telephone(x)
    if rng.random() < 0.7:
        x = add_noise(x, rng, snr_db=rng.uniform(0, 40), color=NoiseColor.PINK if rng.random() < 0.5 else "white")
    return gain(x, rng.uniform(-12, 6))
