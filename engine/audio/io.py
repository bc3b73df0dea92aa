"""Audio in: any common file or in-memory array -> mono float32 at SAMPLE_RATE.

Files are decoded with PyAV (FFmpeg), so wav/flac/mp3/ogg/m4a and the audio track of a video
all work; FFmpeg resamples, and channels are downmixed as their mean. In-memory arrays (live
sources) go through `to_mono_16k`, a polyphase resampler.
"""

from __future__ import annotations

from math import gcd
from pathlib import Path

import av
import numpy as np
from scipy.signal import resample_poly

from engine.errors import UserError
from engine.timebase import SAMPLE_RATE


class AudioInputError(UserError):
    """The audio given to the engine cannot be used; the message says why and what to do."""


def load_audio(path: str | Path) -> np.ndarray:
    """Decode a file's first audio stream to (n,) float32 mono at SAMPLE_RATE."""
    path = Path(path)
    if not path.is_file():
        raise AudioInputError(f"audio file {path} does not exist; check the path (a .wav, .flac, .mp3 or .ogg file)")
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise AudioInputError(
            f"cannot read {path} as audio ({e}); give a .wav, .flac, .mp3 or .ogg file, "
            "or convert it with `ffmpeg -i input -ar 16000 -ac 1 out.wav`"
        ) from None
    with container:
        if not container.streams.audio:
            raise AudioInputError(f"{path} has no audio stream; give a file that contains speech audio")
        # Resample only; downmix ourselves as the channel mean (FFmpeg's stereo->mono adds +3 dB and can clip).
        resampler = av.AudioResampler(format="fltp", rate=SAMPLE_RATE)
        blocks = []
        try:
            for frame in container.decode(audio=0):
                blocks += [f.to_ndarray().mean(axis=0) for f in resampler.resample(frame)]  # (channels, n) -> (n,)
            blocks += [f.to_ndarray().mean(axis=0) for f in resampler.resample(None)]  # drain the resampler
        except av.FFmpegError as e:
            raise AudioInputError(f"{path} is damaged: decoding failed ({e}); re-export or convert the file") from None
    samples = np.concatenate(blocks).astype(np.float32, copy=False) if blocks else np.zeros(0, np.float32)
    if not len(samples):
        raise AudioInputError(f"{path} contains no audio samples; give a file with at least one audio frame")
    return samples


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(n,) or (n, channels) samples -> (n,) float32 mono; integer PCM is scaled to [-1, 1)."""
    samples = np.asarray(samples)
    if samples.ndim not in (1, 2):
        raise AudioInputError(f"audio must be (n,) or (n, channels), got shape {samples.shape}")
    if np.issubdtype(samples.dtype, np.integer):
        samples = samples / float(-np.iinfo(samples.dtype).min)
    return samples.astype(np.float32).mean(axis=1) if samples.ndim == 2 else samples.astype(np.float32)


def to_mono_16k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """(n,) or (n, channels) samples at any rate -> (m,) float32 mono at SAMPLE_RATE.

    Resampling is stateless (each call is a whole signal): a live source cut into blocks should
    resample with a stateful resampler first (engine.stream.resample).
    """
    if sample_rate <= 0:
        raise AudioInputError(f"sample_rate must be positive, got {sample_rate}")
    mono = to_mono(samples)
    if sample_rate == SAMPLE_RATE:
        return mono
    g = gcd(SAMPLE_RATE, sample_rate)
    return resample_poly(mono, SAMPLE_RATE // g, sample_rate // g).astype(np.float32)
