"""Per-video-frame prosody: energy, F0 and voicing, computed as a stream.

- energy: RMS of the frame's own SAMPLES_PER_FRAME samples in dB relative to full scale
  (RMS 1.0 = 0 dB, a full-scale sine is -3 dB), floored at ENERGY_FLOOR_DB.
- F0 and voicing: YIN (de Cheveigné & Kawahara 2002) over a window centred on the frame:
  the cumulative-mean-normalized difference d'(tau) is searched for lags of F0_MAX..F0_MIN;
  the first dip under YIN_THRESHOLD (refined to its local minimum and by a parabola) gives
  F0. voicing = 1 - d'(tau) at the chosen lag, clipped to [0, 1] (near 1 for a clean periodic
  frame, ~0.1-0.3 for noise). Unvoiced frames (no dip under the threshold, or energy under
  SILENCE_DB, in the frame or in YIN's integration window) have F0 = 0; silent ones also voicing 0.

Frame n's analysis window is [n * SAMPLES_PER_FRAME - PAD, (n + 1) * SAMPLES_PER_FRAME + PAD)
(INTEGRATION + MAX_LAG samples, centred on the frame), so each frame needs `PROSODY_LOOKAHEAD` samples after it ends.
"""

from __future__ import annotations

import numpy as np

from engine.audio.framing import SlidingWindows
from engine.timebase import SAMPLE_RATE, SAMPLES_PER_FRAME

F0_MIN, F0_MAX = 60.0, 400.0  # Hz: covers low male to high female/child speech
MIN_LAG = int(SAMPLE_RATE // F0_MAX)  # 40 samples
MAX_LAG = int(-(-SAMPLE_RATE // F0_MIN)) + 1  # 268: one past the 60 Hz lag, room for the parabola
INTEGRATION = 480  # samples YIN compares per lag (30 ms): long enough for 60 Hz, short enough for pitch glides
PAD = -(-(INTEGRATION + MAX_LAG - SAMPLES_PER_FRAME) // 2)  # window margin on each side of the frame
WINDOW = SAMPLES_PER_FRAME + 2 * PAD  # centred on the frame; holds INTEGRATION + MAX_LAG samples
PROSODY_LOOKAHEAD = PAD  # samples after a frame's last sample that its features need
YIN_THRESHOLD = 0.3  # d' dip that counts as periodic (0.1-0.2 in the paper; 0.3 keeps breathy TTS voices voiced)
SILENCE_DB = -60.0  # frames quieter than this are unvoiced whatever their shape
ENERGY_FLOOR_DB = -100.0  # energy of digital silence

_NFFT = 1 << int(np.ceil(np.log2(WINDOW + INTEGRATION)))  # FFT size for a linear (not circular) correlation


def _yin(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(k, WINDOW) -> F0 in Hz (0 when unvoiced) and voicing in [0, 1], each (k,)."""
    k = len(windows)
    if k == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    x = windows.astype(np.float64)
    w = INTEGRATION
    # d(tau) = sum_j (x_j - x_{j+tau})^2 = E(0) + E(tau) - 2 r(tau), j over [0, w)
    spec_x = np.fft.rfft(x, _NFFT, axis=1)
    spec_head = np.fft.rfft(x[:, :w], _NFFT, axis=1)
    r = np.fft.irfft(np.conj(spec_head) * spec_x, _NFFT, axis=1)[:, : MAX_LAG + 1]  # (k, MAX_LAG + 1)
    sq = np.concatenate([np.zeros((k, 1)), np.cumsum(x * x, axis=1)], axis=1)
    lags = np.arange(MAX_LAG + 1)
    energy_at = sq[:, lags + w] - sq[:, lags]  # sum of x_{j+tau}^2 over the window
    d = np.maximum(energy_at[:, :1] + energy_at - 2 * r, 0.0)
    # Cumulative-mean normalization: d'(0) = 1, d'(tau) = d(tau) * tau / sum_{1..tau} d.
    cum = np.cumsum(d[:, 1:], axis=1)
    dn = np.ones_like(d)
    dn[:, 1:] = d[:, 1:] * lags[1:] / np.maximum(cum, 1e-12)

    # A silent integration window (at an onset) has d(tau) = 0 for every lag that stays silent: not periodicity.
    audible = energy_at[:, 0] / w > 10 ** (SILENCE_DB / 10)
    f0 = np.zeros(k, np.float32)
    voicing = np.zeros(k, np.float32)
    for i in np.flatnonzero(audible):
        row = dn[i]
        below = np.flatnonzero(row[MIN_LAG:MAX_LAG] < YIN_THRESHOLD)
        if len(below):
            tau = MIN_LAG + below[0]
            while tau + 1 < MAX_LAG and row[tau + 1] < row[tau]:  # walk down to the dip's minimum
                tau += 1
        else:
            tau = MIN_LAG + int(np.argmin(row[MIN_LAG:MAX_LAG]))
        voicing[i] = np.clip(1.0 - row[tau], 0.0, 1.0)
        if len(below):
            a, b, c = row[tau - 1], row[tau], row[tau + 1]
            shift = 0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c > 0 else 0.0
            f0[i] = SAMPLE_RATE / (tau + np.clip(shift, -0.5, 0.5))
    return f0, voicing


def _frame_prosody(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    own = windows[:, PAD : PAD + SAMPLES_PER_FRAME].astype(np.float64)
    rms = np.sqrt(np.mean(own * own, axis=1))
    energy = np.maximum(20 * np.log10(np.maximum(rms, 1e-12)), ENERGY_FLOOR_DB).astype(np.float32)
    f0, voicing = _yin(windows)
    silent = energy < SILENCE_DB
    f0[silent], voicing[silent] = 0.0, 0.0
    f0[(f0 < F0_MIN * 0.97) | (f0 > F0_MAX * 1.03)] = 0.0  # the parabola may step just outside the range
    return energy, f0, voicing


class StreamingProsody:
    """Push blocks of any size; get (energy, f0, voicing) for every video frame newly completed."""

    def __init__(self):
        self._windows = SlidingWindows(SAMPLES_PER_FRAME, WINDOW, PAD)

    def reset(self) -> None:
        self._windows.reset()

    def push(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n,) samples -> three (k,) float32 arrays: energy (dBFS), F0 (Hz, 0 = unvoiced), voicing."""
        return _frame_prosody(self._windows.push(samples))

    def flush(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """End of stream: zero-pad so the last (partial) frame completes; then reset."""
        return _frame_prosody(self._windows.flush())


def prosody(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offline: energy, F0, voicing for frames_for_samples(len(samples)) frames."""
    stream = StreamingProsody()
    return tuple(np.concatenate(pair) for pair in zip(stream.push(samples), stream.flush()))
