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
  (the generator starts with a silent history and a stream's end is padded with silence), and each
  chunk's speech features, computed as StreamingGenerator.encode computes them (the speech encoder
  over the `speech_window` frames that end with the chunk's lookahead);
- the clip's emotion index and the normalized neutral reference.
Chunk starts are multiples of L, as in a stream, so context chunks are either wholly valid or wholly
empty. Audio features are computed once per clip (engine.audio.frontend.extract_features; silero
VAD makes that ~25x real time on 2 cores) and cached per shard next to it as
features/<shard>.npz, keyed by the shard's sha256 and FEATURES_VERSION, so a restarted run, the
lip-sync expert and later runs on the same corpus load them in seconds. The speech features of
every chunk are cached the same way per shard and window layout (features/<shard>.speech-*.npz).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from engine.audio.frontend import AudioFeatures, extract_features
from engine.backends.eager import speech_encoder
from engine.errors import UserError
from engine.io import sha256_file
from engine.motion import spec
from engine.motion.generator import (
    UtteranceStats,
    emotion_index,
    prosody_features,
    silence,
    speech_windows,
)
from engine.motion.model import MotionConfig
from train.synth.corpus import load_shard

SPLITS = ("train", "val")
FEATURES_VERSION = 1  # bump when engine.audio's features change: stale caches are then recomputed
SPEECH_VERSION = 1  # bump when engine.audio.speech changes
SPEECH_BATCH = 32  # windows per speech-encoder call while caching


class ClipData(NamedTuple):
    """One corpus clip with its audio features, trimmed to the frames both cover."""

    features: AudioFeatures  # (T,) per-frame audio features
    motion: np.ndarray  # (T, D) raw motion targets
    emotion: str
    voice: str
    text: str
    speech: np.ndarray | None = None  # (chunks, A, tokens, d) speech_table, when loaded for a MotionConfig


def _cached_rows(cache: Path, key: str, compute: Callable[[], list[dict[str, np.ndarray]]]
                 ) -> list[dict[str, np.ndarray]]:
    """Per-clip arrays (named, rows along axis 0) from the .npz `cache` when it holds `key`, else computed and
    written there, joined, atomically: concurrent readers (pretraining, sync expert) never see half a file, and
    concurrent writers (two runs caching one corpus) each write their own temporary file."""
    if cache.is_file():
        with np.load(cache) as z:
            if str(z["key"]) == key:
                bounds, arrays = z["offsets"], {n: z[n] for n in z.files if n not in ("key", "offsets")}
                return [{n: a[bounds[i]:bounds[i + 1]] for n, a in arrays.items()} for i in range(len(bounds) - 1)]
    rows = compute()
    cache.parent.mkdir(exist_ok=True)
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        first = next(iter(rows[0])) if rows else None
        np.savez(f, key=np.array(key), offsets=np.cumsum([0] + [len(r[first]) for r in rows]),
                 **({n: np.concatenate([r[n] for r in rows]) for n in rows[0]} if rows else {}))
    os.replace(tmp, cache)
    return rows


def _shard_features(shard: Path, clips: list[dict]) -> list[AudioFeatures]:
    """Each clip's features, from features/<shard>.npz when it matches the shard, else computed and cached."""
    names = [f.name for f in fields(AudioFeatures)]
    rows = _cached_rows(shard.parent / "features" / (shard.stem + ".npz"), f"{sha256_file(shard)}:{FEATURES_VERSION}",
                        lambda: [vars(extract_features(clip["audio"])) for clip in clips])
    return [AudioFeatures(*(r[n].astype(np.float32) for n in names)) for r in rows]


@torch.inference_mode()
def speech_table(features: AudioFeatures, config: MotionConfig) -> np.ndarray:
    """(ceil(T / L), A, tokens, d) float16: the speech features of every chunk of a clip streamed from its
    first frame (chunk j starts at frame j L), exactly as StreamingGenerator.encode computes them."""
    cfg = config
    windows = speech_windows(features, cfg)  # (chunks, S, 4, 80)
    encoder = speech_encoder(cfg)
    out = [encoder.frames(torch.from_numpy(np.ascontiguousarray(windows[b : b + SPEECH_BATCH])), cfg.audio_frames)
           .numpy().astype(np.float16) for b in range(0, len(windows), SPEECH_BATCH)]
    return np.concatenate(out) if out else np.zeros((0, cfg.audio_frames, cfg.speech_tokens, cfg.speech_dim),
                                                    np.float16)


def _shard_speech(shard: Path, features: list[AudioFeatures], config: MotionConfig) -> list[np.ndarray]:
    """Each clip's speech_table, from features/<shard>.speech-<layout>.npz when it matches, else computed and cached."""
    cfg = config
    layout = f"S{cfg.speech_window}-L{cfg.chunk}-K{cfg.lookahead}-P{cfg.audio_past}-l{cfg.speech_layers}"

    def compute() -> list[dict[str, np.ndarray]]:
        bar = tqdm(features, desc=f"speech features of {shard.name} (cached after)", unit="clip", leave=False)
        return [{"speech": speech_table(f, cfg)} for f in bar]

    rows = _cached_rows(shard.parent / "features" / f"{shard.stem}.speech-{layout}.npz",
                        f"{sha256_file(shard)}:{FEATURES_VERSION}:{SPEECH_VERSION}", compute)
    return [r["speech"] for r in rows]


def load_clips(directory: str | Path, split: str = "train", config: MotionConfig | None = None) -> list[ClipData]:
    """Every clip of one split of a corpus directory, with its (cached) audio features and, given the
    generator's config, its (cached) speech features."""
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
        features = _shard_features(directory / name, clips)
        speech = _shard_speech(directory / name, features, config) if config else [None] * len(clips)
        for clip, feats, table in zip(clips, features, speech):
            frames = min(len(feats), len(clip["motion"]))
            out.append(ClipData(feats[:frames], clip["motion"][:frames], clip["emotion"], clip["voice"],
                                clip["text"], table))
    return out


class Batch(NamedTuple):
    """B training windows (n = W / L context chunks, A = P + L + K audio frames, D motion coefficients)."""

    context: Tensor  # (B, W, D) clean normalized motion of the W frames before the target
    context_valid: Tensor  # (B, W) bool: False for frames before the clip's start
    context_speech: Tensor  # (B, n, A, speech_tokens, speech_dim) each context chunk's speech features
    context_prosody: Tensor  # (B, n, A, n_prosody)
    context_stats: Tensor  # (B, n, n_stats) utterance statistics at each context chunk's start
    target: Tensor  # (B, L, D) clean normalized motion to learn
    speech: Tensor  # (B, A, speech_tokens, speech_dim) the target chunk's speech features
    prosody: Tensor  # (B, A, n_prosody)
    stats: Tensor  # (B, n_stats) utterance statistics over the clip's frames before the target
    emotion: Tensor  # (B,) int64 emotion index (engine.motion.generator.emotion_index)
    ref: Tensor  # (B, D) normalized neutral reference motion
    start: Tensor  # (B,) int64 the target's first frame within its clip (a multiple of L)


@dataclass
class _Clip:
    motion: np.ndarray  # (T + W, D) normalized motion, W neutral frames in front
    speech: np.ndarray  # (1 + chunks, A, tokens, d) float16: row 0 a silent window's, then chunk j's at 1 + j
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
        clips = load_clips(directory, split, cfg)
        self._silent = speech_table(silence(cfg.chunk), cfg)  # what chunks before a clip's start hold
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
            speech=np.concatenate([self._silent, clip.speech]),
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
        speech_idx = np.maximum(chunk_starts // L + 1, 0)  # row 0 (silence) for chunks before the clip
        stats = np.where((chunk_starts >= 0)[:, None], clip.stats[np.maximum(chunk_starts, 0)], 0.0)
        return {
            "motion": clip.motion[s : s + W + L],  # padded index of frame f is f + W
            "valid": np.arange(s - W, s) >= 0,
            "speech": clip.speech[speech_idx].astype(np.float32),
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
        motion, valid, speech, prosody, stats = (torch.from_numpy(np.stack([p[key] for p in parts]))
                                                 for key in ("motion", "valid", "speech", "prosody", "stats"))
        W = cfg.context
        return Batch(
            context=motion[:, :W],
            context_valid=valid,
            context_speech=speech[:, :-1],
            context_prosody=prosody[:, :-1],
            context_stats=stats[:, :-1],
            target=motion[:, W:],
            speech=speech[:, -1],
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
