"""Whisper-style 80-bin log-mel features, computed as a stream.

The spectrum is whisper's: a 400-sample periodic Hann window, |FFT|^2, a slaney-style mel
filterbank (linear below 1 kHz, logarithmic above, area-normalized triangles), log10 with a
1e-10 floor. Two things differ, both because a live stream cannot see the future:

- Framing: mel frame m is centred on sample m * MEL_HOP, its window spans
  [m * MEL_HOP - N_FFT/2, m * MEL_HOP + N_FFT/2) and the stream starts with N_FFT/2 zeros
  (whisper reflect-pads, which needs samples that have not arrived). A frame therefore needs
  the audio up to N_FFT/2 samples past its centre: its last sample is centre + `MEL_LOOKAHEAD`
  (= N_FFT/2 - 1 = 199, 12.4 ms). Mel frames 4n..4n+3 belong to video
  frame n (centres 0, 10, 20, 30 ms into it).
- Normalization: whisper clamps at (per-file max - 8), which depends on the whole file. We clamp
  at a fixed floor `LOG_FLOOR` = -8 (eight decades below a power of 1, i.e. the whisper rule for
  a file whose loudest bin has power 1), then apply whisper's (x + 4) / 4. Silence is -1.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from engine.audio.framing import SlidingWindows
from engine.timebase import MEL_HOP, N_FFT, N_MELS, SAMPLE_RATE

LOG_FLOOR = -8.0  # log10 power floor: fixed, so features never depend on later audio
MEL_LOOKAHEAD = N_FFT // 2 - 1  # a mel frame's last sample, counted from its centre


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear (3 mels per 200 Hz) below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, np.float64)
    linear = hz / (200.0 / 3)
    log_step = np.log(6.4) / 27.0  # 27 mels per factor 6.4 in frequency
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) / log_step, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    log_step = np.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), mel * (200.0 / 3))


@lru_cache(maxsize=None)
def mel_filters() -> np.ndarray:
    """(N_MELS, N_FFT // 2 + 1) float32 slaney filterbank from 0 Hz to Nyquist."""
    fft_hz = np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), N_MELS + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_hz - lower) / (centre - lower)
    falling = (upper - fft_hz) / (upper - centre)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    # Slaney normalization: every filter has the same area, so bands of any width weigh alike.
    return (triangles * (2.0 / (upper - lower))).astype(np.float32)


def mel_center_frequencies() -> np.ndarray:
    """(N_MELS,) centre frequency of each mel bin in Hz."""
    return _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), N_MELS + 2))[1:-1]


_WINDOW = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic Hann


def _log_mel_frames(windows: np.ndarray) -> np.ndarray:
    """(k, N_FFT) raw windows -> (k, N_MELS) normalized log-mel."""
    power = np.abs(np.fft.rfft(windows * _WINDOW, axis=1)) ** 2  # (k, N_FFT // 2 + 1)
    mel = power.astype(np.float32) @ mel_filters().T  # (k, N_MELS)
    log = np.log10(np.maximum(mel, 1e-10))
    return ((np.maximum(log, LOG_FLOOR) + 4.0) / 4.0).astype(np.float32)


class StreamingLogMel:
    """Push blocks of any size; get every mel frame as soon as its window is complete.

    The result does not depend on how the stream is cut into blocks.
    """

    def __init__(self):
        self._windows = SlidingWindows(MEL_HOP, N_FFT, N_FFT // 2)

    def reset(self) -> None:
        self._windows.reset()

    def push(self, samples: np.ndarray) -> np.ndarray:
        """(n,) float32 samples -> (k, N_MELS) float32 for the k mel frames newly completed."""
        return _log_mel_frames(self._windows.push(samples))

    def flush(self) -> np.ndarray:
        """End of stream: zero-pad so every frame centred inside the audio completes; then reset."""
        return _log_mel_frames(self._windows.flush())


def log_mel(samples: np.ndarray) -> np.ndarray:
    """Offline: (ceil(n / MEL_HOP), N_MELS) log-mel of a whole signal, the same as streaming it."""
    stream = StreamingLogMel()
    return np.concatenate([stream.push(samples), stream.flush()])
