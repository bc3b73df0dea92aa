"""A stateful streaming resampler: live audio blocks at any rate -> mono float32 at SAMPLE_RATE.

`engine.audio.io.to_mono_16k` resamples a whole buffer; cutting a live stream into blocks and
resampling each alone clicks at every boundary (each block's filter sees zeros beyond its edges).
`StreamResampler` runs the very polyphase FIR that `scipy.signal.resample_poly` designs (Kaiser
window, beta 5, half-length 10 x max(up, down)) over the stream, carrying the input the filter still
needs from block to block. Output sample k is emitted as soon as every input sample it depends on
has arrived (a delay of about half the filter, 0.6 ms at 48 kHz), so the concatenated output of
any blocking, followed by `flush()`, equals `resample_poly` of the whole signal.
"""

from __future__ import annotations

from math import gcd

import numpy as np
from scipy.signal import firwin, upfirdn

from engine.audio.io import AudioInputError, to_mono
from engine.timebase import SAMPLE_RATE


class StreamResampler:
    """One input stream at `rate` Hz; push blocks of (n,) or (n, channels) samples, any dtype."""

    def __init__(self, rate: int):
        if not isinstance(rate, int) or rate <= 0:
            raise AudioInputError(f"sample_rate must be a positive integer (e.g. 48000), got {rate!r}")
        self.rate = rate
        g = gcd(SAMPLE_RATE, rate)
        self.up, self.down = SAMPLE_RATE // g, rate // g
        if self.up != self.down:
            # resample_poly's filter, pre-padded so output k is centred on input k * down / up.
            max_rate = max(self.up, self.down)
            half_len = 10 * max_rate
            taps = firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * self.up
            pre_pad = self.down - half_len % self.down
            self._taps = np.concatenate([np.zeros(pre_pad), taps])
            self._skip = (half_len + pre_pad) // self.down  # leading outputs resample_poly drops
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next push starts a new one."""
        self._buffer = np.zeros(0, np.float64)  # input samples the filter still needs
        self._buffer_start = 0  # input index of _buffer[0], a multiple of `down`
        self._received = 0  # input samples pushed
        self._emitted = 0  # output samples handed out

    def push(self, samples: np.ndarray) -> np.ndarray:
        """A block of input -> (m,) float32 mono output samples newly computable (m may be 0)."""
        mono = to_mono(samples)
        if self.up == self.down:
            return mono
        self._buffer = np.concatenate([self._buffer, mono])
        self._received += len(mono)
        # Output k (after the skip) reads inputs up to floor((k + skip) * down / up).
        ready = ((self._received - 1) * self.up) // self.down - self._skip + 1 if self._received else 0
        return self._emit(ready)

    def flush(self) -> np.ndarray:
        """End of stream: the remaining outputs (the input zero-padded, as resample_poly does); then reset."""
        if self.up == self.down:
            return np.zeros(0, np.float32)
        total = -(-self._received * self.up // self.down)  # resample_poly's output length
        self._buffer = np.concatenate([self._buffer, np.zeros(len(self._taps) // self.up + 1)])
        out = self._emit(total)
        self.reset()
        return out

    def _emit(self, end: int) -> np.ndarray:
        """Outputs [emitted, end) from the buffered input."""
        if end <= self._emitted:
            return np.zeros(0, np.float32)
        # upfirdn over the buffer gives the full filter output from output index buffer_start * up / down
        # on (exact: buffer_start is a multiple of down); the skip re-centres it as resample_poly does.
        first = self._buffer_start * self.up // self.down
        full = upfirdn(self._taps, self._buffer, self.up, self.down)
        out = full[self._emitted + self._skip - first : end + self._skip - first].astype(np.float32)
        self._emitted = end
        # Drop inputs no future output reads: output k reads inputs above ((k + skip) * down - taps) / up.
        oldest = max(((self._emitted + self._skip) * self.down - len(self._taps)) // self.up, 0)
        cut = oldest // self.down * self.down - self._buffer_start
        if cut > 0:
            self._buffer, self._buffer_start = self._buffer[cut:], self._buffer_start + cut
        return out
