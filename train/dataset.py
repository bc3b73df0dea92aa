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
empty. Audio features are computed once per clip (engine.audio.frontend.extract_features; silero
VAD makes that ~25x real time on 2 cores) and cached per shard next to it as
features/<shard>.npz, keyed by the shard's sha256 and FEATURES_VERSION, so a restarted run, the
lip-sync expert and later runs on the same corpus load them in seconds.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from engine.audio.frontend import AudioFeatures, extract_features
from engine.errors import UserError
from engine.io import sha256_file
from engine.motion import spec
from engine.motion.generator import UtteranceStats, emotion_index, prosody_features, silence
from engine.motion.model import MotionConfig
from train.synth.corpus import load_shard

SPLITS = ("train", "val")
FEATURES_VERSION = 1  # bump when engine.audio's features change: stale caches are then recomputed


class ClipData(NamedTuple):
    """One corpus clip with its audio features, trimmed to the frames both cover."""

    features: AudioFeatures  # (T,) per-frame audio features
    motion: np.ndarray  # (T, D) raw motion targets
    emotion: str
    voice: str
    text: str


def _shard_features(shard: Path, clips: list[dict]) -> list[AudioFeatures]:
    """Each clip's features, from features/<shard>.npz when it matches the shard, else computed and cached."""
    cache = shard.parent / "features" / (shard.stem + ".npz")
    key = f"{sha256_file(shard)}:{FEATURES_VERSION}"
    names = [f.name for f in fields(AudioFeatures)]
    if cache.is_file():
        with np.load(cache) as z:
            if str(z["key"]) == key:
                bounds = z["offsets"]
                return [AudioFeatures(*(z[n][bounds[i]:bounds[i + 1]].astype(np.float32) for n in names))
                        for i in range(len(bounds) - 1)]
    computed = [extract_features(clip["audio"]) for clip in clips]
    cache.parent.mkdir(exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp")
    joined = AudioFeatures.concat(computed)
    with tmp.open("wb") as f:  # atomic, so concurrent readers (pretraining, sync expert) never see half a file
        np.savez(f, key=np.array(key), offsets=np.cumsum([0] + [len(c) for c in computed]),
                 **{n: getattr(joined, n) for n in names})
    os.replace(tmp, cache)
    return computed


def load_clips(directory: str | Path, split: str = "train") -> list[ClipData]:
    """Every clip of one split of a corpus directory, with its (cached) audio features."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        raise UserError(f"{manifest_path} does not exist; build a corpus first with "
                        f"`avatar data synth --out {directory} --hours H --seed S`")
    manifest = json.loads(manifest_path.read_text())
    out = []
    for name in (s["file"] for s in manifest["shards"] if s["split"] == split):
        clips = load_shard(directory / name)
        for clip, features in zip(clips, _shard_features(directory / name, clips)):
            frames = min(len(features), len(clip["motion"]))
            out.append(ClipData(features[:frames], clip["motion"][:frames], clip["emotion"], clip["voice"],
                                clip["text"]))
    return out


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
        self.directory = Path(directory)
        self.config = config or MotionConfig()
        cfg = self.config
        if cfg.context % cfg.chunk:
            raise ValueError(f"the cache window W={cfg.context} must be a multiple of the chunk L={cfg.chunk} "
                             "so the context splits into whole chunks")
        self.split = split
        clips = load_clips(directory, split)
        self.clips: list[_Clip] = [self._prepare(c) for c in clips if len(c.motion) >= cfg.chunk]
        # Chunk starts per clip: 0, L, 2L, ... with the whole target inside the clip.
        self._starts = np.array([(c.frames - cfg.chunk) // cfg.chunk + 1 for c in self.clips], np.int64)
        self.windows = int(self._starts.sum())

    def __len__(self) -> int:
        return len(self.clips)

    def _prepare(self, clip: ClipData) -> _Clip:
        cfg = self.config
        features, frames = clip.features, len(clip.features)
        padded = AudioFeatures.concat([silence(cfg.context + cfg.audio_past), features,
                                       silence(cfg.chunk + cfg.lookahead)])
        motion = np.concatenate([spec.neutral(cfg.context), clip.motion])
        prosody = prosody_features(padded)
        return _Clip(
            motion=spec.normalize(motion),
            mel=padded.mel,
            prosody=prosody,
            stats=_stats_table(prosody[cfg.context + cfg.audio_past:][:frames]),
            emotion=emotion_index(clip.emotion),
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
