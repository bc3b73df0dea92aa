"""The learned driver for one stream: audio features chunk by chunk in, raw motion out.

Each `step` takes the features of the next L frames plus K lookahead frames, samples the chunk
with the flow sampler against the KV cache, commits the clean chunk to the cache and returns
the chunk as raw, clipped motion coefficients (engine.motion.spec). The next call's features
start L frames later (its first K frames are this call's lookahead). The speech encoder hears the
last `speech_window` frames of mel, ending with the lookahead. What the generator keeps between
calls is all named here: the cache, the audio history before the chunk and the utterance statistics.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.audio.frontend import AudioFeatures
from engine.backends import ChunkStep
from engine.motion import spec
from engine.motion.baseline import EMOTIONS
from engine.motion.model import N_PROSODY, NO_EMOTION, Conditions, MotionConfig
from engine.timebase import FPS, MELS_PER_FRAME, N_MELS

STATS_HORIZON = 2 * FPS  # speech frames the utterance statistics average over before they turn into an EMA


def silence(frames: int) -> AudioFeatures:
    """Features of digital silence (what the frontend gives for zeros): pads the stream's start."""
    zero = np.zeros(frames, np.float32)
    return AudioFeatures(np.full((frames, MELS_PER_FRAME, N_MELS), -1.0, np.float32), zero - 100.0, zero, zero, zero)


def prosody_features(features: AudioFeatures) -> np.ndarray:
    """(T, 4) model inputs of order 1: energy, log2 F0 around 150 Hz (0 when unvoiced), voicing, VAD."""
    energy = (np.clip(features.energy, -100.0, 0.0) + 50.0) / 25.0
    log_f0 = np.where(features.f0 > 0, np.log2(np.maximum(features.f0, 1.0) / 150.0), 0.0)
    return np.stack([energy, log_f0, features.voicing, features.vad], axis=1).astype(np.float32)


class UtteranceStats:
    """Running mean and std of the prosody channels over speech frames (weighted by VAD): an exact
    mean for the first STATS_HORIZON speech frames, then an exponential moving average."""

    def __init__(self):
        self.weight = 0.0
        self.mean = np.zeros(N_PROSODY, np.float64)
        self.mean_sq = np.zeros(N_PROSODY, np.float64)

    def vector(self) -> np.ndarray:
        """(8,) float32: mean and std of the 4 prosody channels (zeros before any speech)."""
        std = np.sqrt(np.maximum(self.mean_sq - self.mean**2, 0.0))
        return np.concatenate([self.mean, std]).astype(np.float32)

    def update(self, prosody: np.ndarray) -> None:
        """Fold in (T, 4) prosody_features, frame by frame (any chunking gives the same result)."""
        for row in prosody.astype(np.float64):
            speech = row[3]  # VAD probability
            if speech <= 0:
                continue
            self.weight = min(self.weight + speech, STATS_HORIZON)
            rate = speech / self.weight
            self.mean += rate * (row - self.mean)
            self.mean_sq += rate * (row**2 - self.mean_sq)


def emotion_index(emotion: str | None) -> int:
    if emotion is None:
        return NO_EMOTION
    if emotion not in EMOTIONS:
        raise ValueError(f"emotion must be one of {', '.join(EMOTIONS)} or None; got {emotion!r}")
    return EMOTIONS.index(emotion)


def make_conditions(window: AudioFeatures, speech: torch.Tensor, stats: np.ndarray, emotion: str | None,
                    ref: np.ndarray, device=None) -> Conditions:
    """A batch of one: `window` holds P past + L + K frames, `speech` their (1, A, tokens, d) speech
    features, `ref` is raw (D,) reference motion."""
    return Conditions(
        speech=speech,
        prosody=torch.as_tensor(prosody_features(window), device=device)[None],
        stats=torch.as_tensor(stats, device=device)[None],
        audio_on=torch.ones(1, dtype=torch.bool, device=device),
        emotion=torch.tensor([emotion_index(emotion)], device=device),
        ref=torch.as_tensor(spec.normalize(np.asarray(ref, np.float32)), device=device)[None],
    )


def speech_windows(features: AudioFeatures, config: MotionConfig) -> np.ndarray:
    """Offline: (ceil(T / L), S, 4, 80) the mel window the streaming generator's encode meets at each chunk of
    a clip streamed from its first frame (silent history before it, the end padded with silence)."""
    L, K, S = config.chunk, config.lookahead, config.speech_window
    # frame f sits at f + S - L - K; chunk j (frames j L ..) has its window end after frame j L + L + K - 1
    mel = AudioFeatures.concat([silence(S - L - K), features, silence(L + K)]).mel
    windows = np.lib.stride_tricks.sliding_window_view(mel, S, axis=0)  # (frames, 4, 80, S), views: no copy
    return windows[: len(features) : L].transpose(0, 3, 1, 2)


class StreamingGenerator:
    """One stream over a backend's ChunkStep (engine.backends): the host-side work of every chunk."""

    def __init__(self, step: ChunkStep, seed: int = 0):
        self.chunk_step = step
        self.config = step.config
        self.device = step.device
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        """Forget the stream: empty cache, silent audio history, fresh statistics and noise."""
        cfg = self.config
        self.cache = self.chunk_step.empty_cache()
        # the audio frames before the next chunk: the speech window's start (P past frames at least)
        self.past = silence(cfg.speech_window - cfg.chunk - cfg.lookahead)
        self.stats = UtteranceStats()
        self.rng = torch.Generator(device=self.device).manual_seed(self.seed)

    def step(self, features: AudioFeatures, emotion: str | None = "neutral", ref: np.ndarray | None = None,
             noise: torch.Tensor | np.ndarray | None = None) -> np.ndarray:
        """Features of L + K frames -> (L, D) raw motion of the first L, clipped to the spec's bounds.

        `ref` is the avatar's raw (D,) neutral motion (default spec.neutral()); `noise` (L, D) standard
        normal (default: drawn from the generator's seeded stream); emotion None means "none"."""
        cfg = self.config
        if len(features) != cfg.chunk + cfg.lookahead:
            raise ValueError(
                f"step needs features for L + K = {cfg.chunk} + {cfg.lookahead} frames (the chunk and its "
                f"lookahead); got {len(features)}. Pad the end of a stream with generator.silence(n)."
            )
        if noise is None:
            noise = torch.randn(cfg.chunk, cfg.motion_dim, generator=self.rng, device=self.device)
        noise = torch.as_tensor(noise, dtype=torch.float32, device=self.device)
        window = AudioFeatures.concat([self.past, features])  # speech_window frames
        clean, self.cache = self.chunk_step(self._conditions(window, emotion, ref),
                                            noise.reshape(1, cfg.chunk, cfg.motion_dim), self.cache)
        self._advance(window)
        return spec.clip(spec.denormalize(clean[0].cpu().numpy()))

    def advance(self, features: AudioFeatures) -> None:
        """Move the audio history and statistics past a chunk (its L + K frames of features) without sampling
        it: with `conditions`, what an RL rollout needs to sample the chunks itself (rl.rollout)."""
        self._advance(AudioFeatures.concat([self.past, features]))

    def _advance(self, window: AudioFeatures) -> None:
        cfg = self.config
        self.stats.update(prosody_features(window[-cfg.chunk - cfg.lookahead:][: cfg.chunk]))
        self.past = window[cfg.chunk : -cfg.lookahead or None]

    def conditions(self, features: AudioFeatures, emotion: str | None = "neutral", ref: np.ndarray | None = None
                   ) -> Conditions:
        """The next chunk's conditions from its L + K frames of features and the stream's state so far."""
        return self._conditions(AudioFeatures.concat([self.past, features]), emotion, ref)

    def _conditions(self, window: AudioFeatures, emotion: str | None, ref: np.ndarray | None) -> Conditions:
        ref = spec.neutral() if ref is None else ref
        speech = self.chunk_step.encode(torch.as_tensor(window.mel, device=self.device)[None])
        return make_conditions(window[-self.config.audio_frames:], speech, self.stats.vector(), emotion, ref,
                               self.device)
