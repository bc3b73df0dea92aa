"""Speech probability per video frame from silero-vad, as a stream.

silero-vad scores 512-sample chunks at 16 kHz (32 ms), each seen with the previous chunk's
last 64 samples as context and a recurrent state carried from chunk to chunk. The network is
loaded once per process and shared; the context and state live in each `StreamingVAD`, so
streams never leak into each other. A video frame's probability is the overlap-weighted mean
of the chunks it overlaps, so frame n needs the chunk holding its last sample: up to
`VAD_LOOKAHEAD` samples after the frame ends.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from engine.timebase import SAMPLE_RATE, SAMPLES_PER_FRAME

VAD_CHUNK = 512  # samples silero-vad scores at a time at 16 kHz
VAD_CONTEXT = 64  # samples of the previous chunk it is shown again
VAD_LOOKAHEAD = VAD_CHUNK - np.gcd(VAD_CHUNK, SAMPLES_PER_FRAME)  # 384: worst case, frame end to chunk end

if SAMPLE_RATE != 16000:
    raise ImportError(f"silero-vad runs at 16 kHz (512-sample chunks); the engine's SAMPLE_RATE is {SAMPLE_RATE}")


@lru_cache(maxsize=1)
def _network() -> torch.nn.Module:
    """The 16 kHz silero-vad network, without the wrapper that hides its state (loaded once)."""
    threads = torch.get_num_threads()
    from silero_vad import load_silero_vad  # its import sets torch to 1 thread for the whole process

    net = load_silero_vad(onnx=False)._model.eval()
    torch.set_num_threads(threads)  # the caller's choice stands
    return net


class StreamingVAD:
    """Push blocks of any size; get the speech probability of every video frame newly completed."""

    def __init__(self):
        self._net = _network()
        self.reset()

    def reset(self) -> None:
        self._pending = np.zeros(0, np.float32)  # samples not yet in a scored chunk
        self._context = torch.zeros(1, VAD_CONTEXT)
        self._state = torch.zeros(2, 1, 128)  # the network's recurrent state, (2, batch, 128)
        self._chunk_probs = np.zeros(0, np.float32)  # scored chunks not yet fully used by frames
        self._chunk_start = 0  # chunk index of _chunk_probs[0]
        self._frames = 0  # video frames emitted
        self._pushed = 0  # real samples received

    def _score(self, samples: np.ndarray) -> None:
        self._pending = np.concatenate([self._pending, samples])
        n = len(self._pending) // VAD_CHUNK
        if n == 0:
            return
        chunks = torch.from_numpy(self._pending[: n * VAD_CHUNK].reshape(n, VAD_CHUNK))
        probs = np.empty(n, np.float32)
        with torch.inference_mode():
            for i in range(n):
                x = torch.cat([self._context, chunks[i : i + 1]], dim=1)  # (1, VAD_CONTEXT + VAD_CHUNK)
                out, self._state = self._net(x, self._state)
                self._context = x[:, -VAD_CONTEXT:]
                probs[i] = float(out)
        self._pending = self._pending[n * VAD_CHUNK :]
        self._chunk_probs = np.concatenate([self._chunk_probs, probs])

    def _emit(self) -> np.ndarray:
        """Probabilities of the frames whose chunks are all scored, overlap-weighted."""
        scored_end = (self._chunk_start + len(self._chunk_probs)) * VAD_CHUNK  # one past the last scored sample
        k = scored_end // SAMPLES_PER_FRAME - self._frames
        out = np.empty(max(k, 0), np.float32)
        for i in range(len(out)):
            begin = (self._frames + i) * SAMPLES_PER_FRAME
            first, last = begin // VAD_CHUNK, (begin + SAMPLES_PER_FRAME - 1) // VAD_CHUNK
            edges = np.clip(np.arange(first, last + 2) * VAD_CHUNK, begin, begin + SAMPLES_PER_FRAME)
            weights = np.diff(edges) / SAMPLES_PER_FRAME
            out[i] = weights @ self._chunk_probs[first - self._chunk_start : last + 1 - self._chunk_start]
        self._frames += len(out)
        drop = self._frames * SAMPLES_PER_FRAME // VAD_CHUNK - self._chunk_start  # chunks no later frame overlaps
        self._chunk_probs, self._chunk_start = self._chunk_probs[drop:], self._chunk_start + drop
        return out

    def push(self, samples: np.ndarray) -> np.ndarray:
        """(n,) float32 samples -> (k,) speech probabilities for the k video frames newly completed."""
        samples = np.asarray(samples, np.float32).reshape(-1)
        self._pushed += len(samples)
        self._score(samples)
        return self._emit()

    def flush(self) -> np.ndarray:
        """End of stream: zero-pad so the last (partial) frame completes; then reset."""
        frames = -(-self._pushed // SAMPLES_PER_FRAME)
        needed = -(-frames * SAMPLES_PER_FRAME // VAD_CHUNK) * VAD_CHUNK  # whole chunks covering every frame
        self._score(np.zeros(max(needed - self._pushed, 0), np.float32))
        out = self._emit()
        self.reset()
        return out


def speech_probability(samples: np.ndarray) -> np.ndarray:
    """Offline: (frames_for_samples(n),) speech probability per video frame."""
    stream = StreamingVAD()
    return np.concatenate([stream.push(samples), stream.flush()])
