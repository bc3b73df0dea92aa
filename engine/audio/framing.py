"""Sliding analysis windows over a stream, identical however the stream is cut into blocks.

Window m starts `left_pad` samples before sample m * hop (the stream starts with `left_pad`
zeros, never reflect padding, which would need the future) and is `size` samples long, so it
is complete once sample m * hop - left_pad + size - 1 has arrived. Every extractor in
engine/audio frames its input through this one class, so their alignment cannot disagree.
"""

from __future__ import annotations

import numpy as np


class SlidingWindows:
    """Buffers pushed samples and hands out every analysis window as soon as it is complete."""

    def __init__(self, hop: int, size: int, left_pad: int):
        if not 0 <= left_pad < size or hop <= 0:
            raise ValueError(f"bad framing: hop {hop}, size {size}, left_pad {left_pad}")
        self.hop, self.size, self.left_pad = hop, size, left_pad
        self.reset()

    def reset(self) -> None:
        self._buffer = np.zeros(self.left_pad, np.float32)  # starts at the next window's first sample
        self._pushed = 0  # real (not padding) samples received

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Append samples; return the newly complete windows, (k, size) float32."""
        samples = np.asarray(samples, np.float32).reshape(-1)
        self._pushed += len(samples)
        self._buffer = np.concatenate([self._buffer, samples])
        k = max(0, (len(self._buffer) - self.size) // self.hop + 1)
        if k == 0:
            return np.zeros((0, self.size), np.float32)
        # (k, size) view; copied so callers may keep it after the buffer moves on.
        windows = np.lib.stride_tricks.sliding_window_view(self._buffer, self.size)[: k * self.hop : self.hop].copy()
        self._buffer = self._buffer[k * self.hop :]
        return windows

    def flush(self) -> np.ndarray:
        """End of stream: zero-pad so every window anchored inside the pushed audio completes, then reset."""
        total = -(-self._pushed // self.hop)  # windows anchored at m * hop < pushed samples
        last_end = (total - 1) * self.hop - self.left_pad + self.size  # one past window total-1's last sample
        windows = self.push(np.zeros(max(last_end - self._pushed, 0), np.float32))
        self.reset()
        return windows
