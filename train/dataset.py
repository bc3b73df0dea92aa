"""Training windows for the motion generator, cut from a synthetic corpus (train.synth.corpus).

    corpus = Corpus("data/synth", split="train", config=MotionConfig.tiny())
    batch = corpus.sample_batch(np.random.default_rng(0), batch=16)

A window reproduces what the streaming generator (engine.motion.generator) sees when it reaches a
chunk that starts at frame s of a clip, the stream having started at the clip's first frame:
- n = W / L clean context chunks (frames s - W .. s - 1) to commit to the KV cache, each with the
  conditions it had when it was generated (its audio window and the utterance statistics at its
  start); chunks before the clip's start are flagged invalid (empty cache slots) and hold neutral;
- the L target frames s .. s + L - 1 with their conditions;
- audio windows of P past + L + K lookahead frames, padded with generator.silence at the clip's edges
  (the generator starts with P silent past frames and a stream's end is padded with silence);
- the clip's emotion index and the normalized neutral reference.
Chunk starts are multiples of L, as in a stream, so context chunks are either wholly valid or wholly
empty. Audio features are computed once per clip (engine.audio.frontend.extract_features) and kept
in memory with the clip's per-frame utterance statistics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from engine.audio.frontend import AudioFeatures, extract_features
from engine.errors import UserError
from engine.motion import spec
from engine.motion.generator import UtteranceStats, emotion_index, prosody_features, silence
from engine.motion.model import MotionConfig
from engine.timebase import frames_for_samples
from train.synth.corpus import load_shard

SPLITS = ("train", "val")


class Batch(NamedTuple):
    """B training windows (n = W / L context chunks, A = P + L + K audio frames, D motion coefficients)."""

    context: Tensor  # (B, W, D) clean normalized motion of the W frames before the target
    context_valid: Tensor  # (B, W) bool: False for frames before the clip's start
    context_mel: Tensor  # (B, n, A, mels_per_frame, n_mels) each context chunk's audio window
    context_prosody: Tensor  # (B, n, A, n_prosody)
    context_stats: Tensor  # (B, n, n_stats) utterance statistics at each context chunk's start
    target: Tensor  # (B, L, D) clean normalized motion to learn
    mel: Tensor  # (B, A, mels_per_frame, n_mels) the target chunk's audio window
    prosody: Tensor  # (B, A, n_prosody)
    stats: Tensor  # (B, n_stats) utterance statistics over the clip's frames before the target
    emotion: Tensor  # (B,) int64 emotion index (engine.motion.generator.emotion_index)
    ref: Tensor  # (B, D) normalized neutral reference motion
    start: Tensor  # (B,) int64 the target's first frame within its clip (a multiple of L)


@dataclass
class _Clip:
    motion: np.ndarray  # (T + W, D) normalized motion, W neutral frames in front
    mel: np.ndarray  # (W + P + T + L + K, mels_per_frame, n_mels) silence-padded at both ends
    prosody: np.ndarray  # (W + P + T + L + K, n_prosody)
    stats: np.ndarray  # (T + 1, n_stats): row f = statistics over frames [0, f)
    emotion: int
    frames: int  # T


def _stats_table(prosody: np.ndarray) -> np.ndarray:
    """(T, 4) prosody -> (T + 1, 8): the utterance statistics before each frame (and after the last)."""
    stats = UtteranceStats()
    rows = [stats.vector()]
    for row in prosody:
        stats.update(row[None])
        rows.append(stats.vector())
    return np.stack(rows)


class Corpus:
    """One split of a corpus directory (manifest.json + shards), as clips ready to cut windows from."""

    def __init__(self, directory: str | Path, split: str = "train", config: MotionConfig | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
        self.directory = Path(directory)
        self.manifest_path = self.directory / "manifest.json"
        if not self.manifest_path.is_file():
            raise UserError(f"{self.manifest_path} does not exist; build a corpus first with "
                            f"`avatar data synth --out {self.directory} --hours H --seed S`")
        self.config = config or MotionConfig()
        cfg = self.config
        if cfg.context % cfg.chunk:
            raise ValueError(f"the cache window W={cfg.context} must be a multiple of the chunk L={cfg.chunk} "
                             "so the context splits into whole chunks")
        self.split = split
        manifest = json.loads(self.manifest_path.read_text())
        files = [s["file"] for s in manifest["shards"] if s["split"] == split]
        self.clips: list[_Clip] = []
        for name in files:
            for clip in load_shard(self.directory / name):
                prepared = self._prepare(clip)
                if prepared is not None:
                    self.clips.append(prepared)
        # Chunk starts per clip: 0, L, 2L, ... with the whole target inside the clip.
        self._starts = np.array([(c.frames - cfg.chunk) // cfg.chunk + 1 for c in self.clips], np.int64)
        self.windows = int(self._starts.sum())

    def __len__(self) -> int:
        return len(self.clips)

    def _prepare(self, clip: dict) -> _Clip | None:
        cfg = self.config
        audio = clip["audio"]
        if audio.dtype == np.int16:
            audio = audio.astype(np.float32) / 32767
        features = extract_features(audio.astype(np.float32))
        frames = min(len(features), len(clip["motion"]), frames_for_samples(len(audio)))
        if frames < cfg.chunk:
            return None
        features = features[:frames]
        padded = AudioFeatures.concat([silence(cfg.context + cfg.audio_past), features,
                                       silence(cfg.chunk + cfg.lookahead)])
        motion = np.concatenate([spec.neutral(cfg.context), clip["motion"][:frames]])
        prosody = prosody_features(padded)
        return _Clip(
            motion=spec.normalize(motion),
            mel=padded.mel,
            prosody=prosody,
            stats=_stats_table(prosody[cfg.context + cfg.audio_past:][:frames]),
            emotion=emotion_index(clip["emotion"]),
            frames=frames,
        )

    def _window(self, clip: _Clip, s: int) -> dict[str, np.ndarray]:
        cfg = self.config
        L, W, A = cfg.chunk, cfg.context, cfg.audio_frames
        n = W // L
        chunk_starts = s - W + L * np.arange(n + 1)  # n context chunks, then the target
        # Padded index of frame f's audio is f + W + P, so the window [f - P, f + L + K) starts at f + W.
        audio_idx = (chunk_starts + W)[:, None] + np.arange(A)  # (n + 1, A)
        stats = np.where((chunk_starts >= 0)[:, None], clip.stats[np.maximum(chunk_starts, 0)], 0.0)
        return {
            "motion": clip.motion[s : s + W + L],  # padded index of frame f is f + W
            "valid": np.arange(s - W, s) >= 0,
            "mel": clip.mel[audio_idx],
            "prosody": clip.prosody[audio_idx],
            "stats": stats.astype(np.float32),
        }

    def sample_batch(self, rng: np.random.Generator, batch: int) -> Batch:
        """`batch` windows drawn uniformly over all chunk starts of the split (seeded by `rng`)."""
        if not self.clips:
            raise UserError(f"the {self.split} split of {self.directory} has no clip of at least "
                            f"{self.config.chunk} frames; build a larger corpus")
        cfg = self.config
        which = rng.choice(len(self.clips), size=batch, p=self._starts / self.windows)
        starts = [int(rng.integers(self._starts[i])) * cfg.chunk for i in which]
        parts = [self._window(self.clips[i], s) for i, s in zip(which, starts)]
        motion, valid, mel, prosody, stats = (torch.from_numpy(np.stack([p[key] for p in parts]))
                                              for key in ("motion", "valid", "mel", "prosody", "stats"))
        W = cfg.context
        return Batch(
            context=motion[:, :W],
            context_valid=valid,
            context_mel=mel[:, :-1],
            context_prosody=prosody[:, :-1],
            context_stats=stats[:, :-1],
            target=motion[:, W:],
            mel=mel[:, -1],
            prosody=prosody[:, -1],
            stats=stats[:, -1],
            emotion=torch.tensor([self.clips[i].emotion for i in which], dtype=torch.int64),
            ref=torch.from_numpy(spec.normalize(spec.neutral()))[None].expand(batch, -1).clone(),
            start=torch.tensor(starts, dtype=torch.int64),
        )

    def fixed_batches(self, seed: int, count: int, batch: int) -> list[Batch]:
        """The same `count` batches for the same seed: a validation set of windows."""
        rng = np.random.default_rng(seed)
        return [self.sample_batch(rng, batch) for _ in range(count)]
