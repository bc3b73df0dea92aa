"""The lip-sync expert: a SyncNet-like contrastive model that says whether a mouth track is in sync with its
audio, and by how many frames it is off (DESIGN.md §7; an evaluation metric now, an RL reward in rl/).

    python -m train.sync_expert --data data/synth --out ckpt/sync
    avatar train sync --data data/synth --out ckpt/sync --steps 15000
    result = sync_offsets(load_expert("ckpt/sync/sync_expert.safetensors"), features, motion)

Two small encoders map a window of `window` video frames centred on frame c to unit embeddings: the audio
window (its speech-encoder tokens, below) and the mouth window (the jaw*/mouth* coefficients of
engine.motion.spec, normalized). Their dot product (cosine similarity) is high when the mouth moves with the
sound.

The audio input is the speech track: for each video frame, the whisper tiny.en encoder's tokens
(engine.audio.speech, 2 per frame, 384 wide) exactly as the streaming generator's `encode` sees them in the
chunk that holds the frame (engine.motion.generator.speech_windows; the clip streamed from its first frame).
So the expert hears what the generator hears, offline and live alike, and its training reads the corpus's
cached speech features (train.dataset.speech_table, keyed by the same layout) instead of recomputing them.
The layout (speech_window, chunk, lookahead, layers) is the shipped generator's and lives in SyncConfig;
frames beyond a clip's edges hear a silent chunk's tokens.

Training (InfoNCE): for each anchor audio window centred on a speech frame c of a training clip, the
candidates are the same clip's mouth windows centred on c + o for o = 0 (the positive) and
min_negative_offset <= |o| <= max_offset (the same voice and face, only out of time), plus the in-sync mouth
windows of the batch's other clips. Offsets +-1 are neither: adjacent windows overlap too much to be told
apart. Anchors sit only on speech frames (VAD), so silence matching silence teaches nothing.

Validation, on held-out voices: each val clip's mouth track is shifted by a known number of frames, cut into
segments of val_segment frames, and `sync_offsets` must find the shift among -max_offset..max_offset.

Outputs in --out: last.pt (resume state, written atomically every save_every steps and at the end; a rerun
continues from it), sync_expert.safetensors (engine.io.checkpoint, with the validation metrics in its
provenance), log.jsonl and loss.png.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.audio.frontend import AudioFeatures
from engine.audio.speech import TOKENS_PER_FRAME, WhisperEncoderConfig
from engine.errors import UserError
from engine.io import sha256_file
from engine.io.checkpoint import load_model, save_checkpoint
from engine.motion import spec
from engine.motion.generator import silence
from engine.motion.model import MotionConfig
from engine.timebase import FPS, checked_div
from train.dataset import ClipData, load_clips, speech_table
from train.pretrain import lr_factor
from train.run import add_run_arguments, load_state, resume, save_state, train_steps

MOUTH: tuple[str, ...] = tuple(n for n in spec.NAMES if n.startswith(("jaw", "mouth")))  # what the expert sees
_MOUTH_INDEX = np.array([spec.index(n) for n in MOUTH])
SPEECH_VAD = 0.5  # a window is speech when the VAD's probability at its centre frame exceeds this
MAX_OFFSET = 15  # frames searched either way by default (600 ms)
MS_PER_FRAME = checked_div(1000, FPS)
VAL_SHIFTS = (-9, -6, -3, 0, 3, 6, 9)  # known shifts given to the validation segments in turn
VAL_SEED = 12345  # the validation windows are the same in every run
_EMBED_BLOCK = 4096  # windows per encoder call at inference (bounds memory on long clips)


# ----------------------------------------------------------------------------------------- the network


@dataclass(frozen=True)
class SyncConfig:
    window: int = 5  # video frames per window (200 ms), centred on the frame it describes; odd
    embed: int = 64  # size of the unit embeddings
    audio_width: int = 128  # channels of the audio encoder
    motion_width: int = 64  # channels of the mouth encoder
    speech_dim: int = WhisperEncoderConfig.d_model  # width of a speech-encoder token
    speech_tokens: int = TOKENS_PER_FRAME  # speech-encoder tokens per video frame
    mouth_dim: int = len(MOUTH)  # mouth and jaw coefficients per frame
    # The streaming layout whose speech features the expert reads (engine.motion.model.MotionConfig's fields of
    # the same names; default: the shipped generator's, so training hits the corpus's speech cache).
    speech_window: int = MotionConfig.speech_window  # video frames of mel the encoder hears per chunk
    speech_chunk: int = MotionConfig.chunk  # L: frames per chunk
    speech_lookahead: int = MotionConfig.lookahead  # K: frames the window reaches past the chunk
    speech_layers: int = MotionConfig.speech_layers  # encoder blocks used

    def __post_init__(self):
        if self.window < 1 or self.window % 2 == 0:
            raise ValueError(f"window must be an odd number of frames (centred on one frame); got {self.window}")
        if self.mouth_dim != len(MOUTH):
            raise ValueError(f"mouth_dim is {self.mouth_dim} but engine.motion.spec has {len(MOUTH)} mouth/jaw "
                             "coefficients: the checkpoint was made for another motion space; retrain it")
        layout = self.layout()  # checks the layout's own constraints
        if (self.speech_dim, self.speech_tokens) != (layout.speech_dim, layout.speech_tokens):
            raise ValueError(f"speech_dim x speech_tokens is {self.speech_dim} x {self.speech_tokens} but the speech "
                             f"encoder gives {layout.speech_dim} x {layout.speech_tokens} per frame; retrain the expert")

    def layout(self) -> MotionConfig:
        """The generator config whose speech features the expert reads (only its speech layout matters; audio_past
        stays the default, which places the chunk in the cached rows and changes no token)."""
        return MotionConfig(chunk=self.speech_chunk, lookahead=self.speech_lookahead,
                            speech_window=self.speech_window, speech_layers=self.speech_layers)

    @property
    def half(self) -> int:
        """Frames on each side of a window's centre."""
        return self.window // 2

    @staticmethod
    def tiny() -> SyncConfig:
        """For tests: trains in seconds on a CPU (one encoder block over 8-frame windows)."""
        return SyncConfig(window=5, embed=16, audio_width=16, motion_width=16, speech_window=8, speech_layers=1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> SyncConfig:
        unknown = set(values) - {f.name for f in fields(cls)}
        if "n_mels" in unknown:
            raise ValueError("this expert reads log-mel (made before the speech encoder, issue 12); retrain it on "
                             "speech features with `avatar train sync`")
        if unknown:
            raise ValueError(f"unknown SyncConfig fields {sorted(unknown)}: not a lip-sync expert checkpoint, "
                             "or one newer than this code")
        return cls(**values)


class SyncExpert(nn.Module):
    """Audio window and mouth window -> unit embeddings; their dot product scores sync."""

    def __init__(self, config: SyncConfig):
        super().__init__()
        self.config = c = config
        w, wm = c.audio_width, c.motion_width
        self.audio = nn.Sequential(  # over the window's tokens (2 per frame)
            nn.Conv1d(c.speech_dim, w, 3, padding=1), nn.GELU(),
            nn.Conv1d(w, w, 3, padding=1), nn.GELU(),
            nn.AvgPool1d(c.speech_tokens),  # one vector per video frame
            nn.Conv1d(w, w, 3, padding=1), nn.GELU(),
            nn.Flatten(), nn.Linear(w * c.window, c.embed),
        )
        self.motion = nn.Sequential(
            nn.Conv1d(c.mouth_dim, wm, 3, padding=1), nn.GELU(),
            nn.Conv1d(wm, wm, 3, padding=1), nn.GELU(),
            nn.Flatten(), nn.Linear(wm * c.window, c.embed),
        )

    def embed_audio(self, speech: Tensor) -> Tensor:
        """(B, window, speech_tokens, speech_dim) speech-encoder tokens -> (B, embed) unit vectors."""
        x = speech.flatten(1, 2).transpose(1, 2)  # (B, speech_dim, window * speech_tokens)
        return F.normalize(self.audio(x), dim=-1)

    def embed_motion(self, mouth: Tensor) -> Tensor:
        """(B, window, mouth_dim) normalized mouth coefficients -> (B, embed) unit vectors."""
        return F.normalize(self.motion(mouth.transpose(1, 2)), dim=-1)

    def forward(self, speech: Tensor, mouth: Tensor) -> Tensor:
        """(B,) cosine similarity of each audio window with its mouth window."""
        return (self.embed_audio(speech) * self.embed_motion(mouth)).sum(-1)


def mouth_track(motion: np.ndarray) -> np.ndarray:
    """(T, D) raw motion -> (T, len(MOUTH)) normalized mouth/jaw coefficients, the expert's motion input."""
    motion = np.asarray(motion, np.float32)
    if motion.ndim != 2 or motion.shape[1] != spec.D:
        raise ValueError(f"motion must be (frames, {spec.D}) raw coefficients (engine.motion.spec); "
                         f"got shape {motion.shape}")
    return spec.normalize(motion)[:, _MOUTH_INDEX]


def _pad_edges(x: np.ndarray, n: int) -> np.ndarray:
    """Repeat the first and last frame n times: a mouth window that overhangs the clip holds still."""
    return np.concatenate([np.repeat(x[:1], n, 0), x, np.repeat(x[-1:], n, 0)]) if n else x


def frame_track(table: np.ndarray, layout: MotionConfig, frames: int) -> np.ndarray:
    """A clip's speech_table (chunks, P + L + K, tokens, d) -> (frames, tokens, d): each frame's tokens from the
    chunk that holds it (the chunk's own L frames, after its P past ones)."""
    P, L = layout.audio_past, layout.chunk
    return table[:, P : P + L].reshape(-1, *table.shape[2:])[:frames]


def speech_track(config: SyncConfig, features: AudioFeatures) -> np.ndarray:
    """(T, speech_tokens, speech_dim) float16: the expert's audio input for a clip's features, as the streaming
    generator's encoder sees each frame (computed with the engine's encoder; the corpus caches the same)."""
    layout = config.layout()
    return frame_track(speech_table(features, layout), layout, len(features))


@lru_cache
def _silent_tokens(config: SyncConfig) -> np.ndarray:
    """(tokens, d): a frame's tokens in a silent stream."""
    return speech_track(config, silence(config.speech_chunk))[0]


def _pad_speech(track: np.ndarray, n: int, config: SyncConfig) -> np.ndarray:
    """A silent frame's tokens on both sides: an audio window that overhangs the clip hears nothing there."""
    pad = np.repeat(_silent_tokens(config)[None], n, 0).astype(track.dtype)
    return np.concatenate([pad, track, pad])


# ------------------------------------------------------------------------------------------ inference


@dataclass(frozen=True)
class SyncResult:
    """How a mouth track lines up with its audio (sync_offsets).

    offset_frames > 0: the motion LAGS the audio by that many frames (the mouth shapes a sound after it is
    heard: delaying the motion by k frames gives +k); < 0: the motion leads. confidence = max(curve) -
    median(curve), in cosine-similarity units: ~0 says the track carries no sync evidence (no speech, a frozen
    mouth, another clip's motion), higher is clearer sync. speech_windows = 0 means no speech was heard: then
    offset 0, confidence 0 and a curve of NaN.
    """

    offset_frames: int  # the best offset
    offset_ms: int  # offset_frames in milliseconds
    confidence: float  # max(curve) - median(curve)
    curve: np.ndarray  # (2 max_offset + 1,) mean similarity at offsets -max_offset..max_offset
    speech_windows: int  # windows scored (centred on speech frames)

    @property
    def offsets(self) -> np.ndarray:
        """The offset (frames) of each entry of `curve`."""
        r = len(self.curve) // 2
        return np.arange(-r, r + 1)

    @property
    def has_speech(self) -> bool:
        return self.speech_windows > 0


def _sliding(x: np.ndarray, window: int) -> np.ndarray:
    """(T + window - 1, ...) -> (T, window, ...) overlapping windows (a view, no copy)."""
    return np.moveaxis(np.lib.stride_tricks.sliding_window_view(x, window, axis=0), -1, 1)


@torch.no_grad()
def audio_embeddings(expert: SyncExpert, features: AudioFeatures, track: np.ndarray | None = None) -> np.ndarray:
    """(T, embed): row c embeds the audio window centred on frame c (silence beyond the clip's edges).
    `track`: the clip's speech_track when already at hand (the corpus's cache), else computed here."""
    c = expert.config
    track = speech_track(c, features) if track is None else track
    if track.shape != (len(features), c.speech_tokens, c.speech_dim):
        raise ValueError(f"the speech track must be ({len(features)}, {c.speech_tokens}, {c.speech_dim}) for "
                         f"{len(features)} frames of features; got {track.shape} (use speech_track)")
    windows = _sliding(_pad_speech(track, c.half, c), c.window)
    return _embed(expert.embed_audio, windows, c.embed)


@torch.no_grad()
def motion_embeddings(expert: SyncExpert, motion: np.ndarray) -> np.ndarray:
    """(T, embed): row c embeds the mouth window centred on frame c of (T, D) raw motion (edges held)."""
    c = expert.config
    windows = _sliding(_pad_edges(mouth_track(motion), c.half), c.window)
    return _embed(expert.embed_motion, windows, c.embed)


def _embed(encoder, windows: np.ndarray, size: int) -> np.ndarray:
    parts = [encoder(torch.from_numpy(np.ascontiguousarray(windows[i : i + _EMBED_BLOCK], np.float32))).numpy()
             for i in range(0, len(windows), _EMBED_BLOCK)]
    return np.concatenate(parts) if parts else np.zeros((0, size), np.float32)


def sync_curve(audio: np.ndarray, motion: np.ndarray, speech: np.ndarray, max_offset: int = MAX_OFFSET
               ) -> SyncResult:
    """The offset search on precomputed embeddings (reuse the audio's for several motion tracks, as in RL).

    audio, motion: (T, embed) from audio_embeddings / motion_embeddings; speech: (T,) bool, the centres to score.
    curve[o] averages audio[c] . motion[c + o] over the speech centres c with c + o inside the clip.
    """
    if audio.shape != motion.shape:
        raise ValueError(f"audio embeddings {audio.shape} and motion embeddings {motion.shape} must cover the same "
                         "frames; trim the features and the motion to the same length")
    if max_offset < 0:
        raise ValueError(f"max_offset must be >= 0 frames; got {max_offset}")
    T = len(audio)
    centres = np.flatnonzero(speech)
    curve = np.full(2 * max_offset + 1, np.nan, np.float32)
    for i, o in enumerate(range(-max_offset, max_offset + 1)):
        c = centres[(centres + o >= 0) & (centres + o < T)]
        if len(c):
            curve[i] = np.mean(np.sum(audio[c] * motion[c + o], axis=1))
    if not len(centres) or np.isnan(curve).all():
        return SyncResult(0, 0, 0.0, curve, 0)
    best = int(np.nanargmax(curve)) - max_offset
    confidence = float(np.nanmax(curve) - np.nanmedian(curve))
    return SyncResult(best, best * MS_PER_FRAME, confidence, curve, len(centres))


def sync_offsets(expert: SyncExpert, features: AudioFeatures, motion: np.ndarray,
                 max_offset: int = MAX_OFFSET) -> SyncResult:
    """How far `motion` ((T, D) raw coefficients) is out of sync with the audio `features` (T frames).

    Scores every window centred on a speech frame (features.vad > SPEECH_VAD) against the mouth windows
    -max_offset..max_offset frames away; see SyncResult for the sign convention and the confidence.
    Deterministic: the same inputs give the same result.
    """
    if np.shape(motion) != (len(features), spec.D):
        raise ValueError(f"motion must be ({len(features)}, {spec.D}): raw coefficients (engine.motion.spec) for "
                         f"each of the {len(features)} frames of the audio features; got {np.shape(motion)} "
                         "(trim the longer of the two)")
    speech = features.vad > SPEECH_VAD
    if not speech.any():  # nothing to score: skip the encoders
        return sync_curve(np.zeros((0, 1), np.float32), np.zeros((0, 1), np.float32), speech[:0], max_offset)
    return sync_curve(audio_embeddings(expert, features), motion_embeddings(expert, motion), speech, max_offset)


def load_expert(path: str | Path) -> SyncExpert:
    """The lip-sync expert written by `avatar train sync` (its sync_expert.safetensors), ready for inference."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"lip-sync expert {path} does not exist; train one with `avatar train sync --data DIR "
                        "--out OUT` (it writes OUT/sync_expert.safetensors), or pass that file's path")
    try:
        expert, _, _ = load_model(path, SyncExpert, SyncConfig)
    except ValueError as err:
        raise UserError(f"{path} is not a lip-sync expert ({err}); pass the sync_expert.safetensors that "
                        "`avatar train sync` wrote") from err
    return expert


# ------------------------------------------------------------------------------------------- training


class SyncBatch(NamedTuple):
    """B anchor windows and, for each, its clip's mouth windows at K = 2 max_offset + 1 offsets."""

    speech: Tensor  # (B, window, speech_tokens, speech_dim) audio window centred on the anchor frame
    mouth: Tensor  # (B, K, window, mouth_dim) mouth windows centred on frame + offset, offsets -R..R
    valid: Tensor  # (B, K) bool: that centre lies inside the clip
    clip: Tensor  # (B,) int64 the anchor's clip number in the split
    frame: Tensor  # (B,) int64 the anchor's centre frame in its clip


class SyncWindows:
    """The speech frames of a split's clips, and the windows around them, ready to gather into batches."""

    def __init__(self, clips: Sequence[ClipData], tracks: Sequence[np.ndarray], config: SyncConfig, max_offset: int):
        """`tracks`: each clip's speech_track (clip_tracks reads them from the corpus's cache)."""
        h, self.max_offset, self.config = config.half, max_offset, config
        reach = h + max_offset  # a mouth window max_offset away overhangs its centre by this much
        if not clips:
            raise ValueError("SyncWindows needs at least one clip")
        self.length = np.array([len(c.motion) for c in clips], np.int64)
        if [len(t) for t in tracks] != list(self.length):
            raise ValueError("each clip needs a speech track of its length (speech_track)")
        # Clip i's frame f sits at speech_base[i] + f in `speech` (float16, as cached) and mouth_base[i] + f in `mouth`.
        self.speech = np.concatenate([_pad_speech(t, h, config) for t in tracks])
        self.mouth = np.concatenate([_pad_edges(mouth_track(c.motion), reach) for c in clips])
        self.speech_base = np.cumsum(np.r_[0, self.length[:-1] + 2 * h]) + h
        self.mouth_base = np.cumsum(np.r_[0, self.length[:-1] + 2 * reach]) + reach
        speech = [np.flatnonzero(c.features.vad > SPEECH_VAD) for c in clips]
        self.centre_clip = np.concatenate([np.full(len(s), i) for i, s in enumerate(speech)])
        self.centre_frame = np.concatenate(speech)

    def __len__(self) -> int:
        return len(self.centre_frame)

    def sample(self, rng: np.random.Generator, batch: int) -> SyncBatch:
        """`batch` anchors drawn uniformly over the speech frames (seeded by `rng`)."""
        pick = rng.integers(len(self), size=batch)
        clip, frame = self.centre_clip[pick], self.centre_frame[pick]
        h, offsets = self.config.half, np.arange(-self.max_offset, self.max_offset + 1)
        span = np.arange(-h, h + 1)
        speech = self.speech[(self.speech_base[clip] + frame)[:, None] + span].astype(np.float32)  # (B, window, 2, d)
        centres = frame[:, None] + offsets  # (B, K)
        mouth = self.mouth[(self.mouth_base[clip][:, None] + centres)[:, :, None] + span]  # (B, K, window, M)
        valid = (centres >= 0) & (centres < self.length[clip][:, None])
        return SyncBatch(*(torch.from_numpy(x) for x in (speech, mouth, valid, clip, frame)))


@dataclass(frozen=True)
class SyncOptions:
    steps: int = 15000  # train until this step; rerunning with a larger value continues the run
    batch: int = 64  # anchor windows per step
    lr: float = 1e-3  # peak AdamW learning rate
    warmup: int = 200  # linear warmup steps
    lr_decay_steps: int | None = None  # cosine decay horizon (None: steps); fix it to extend a run later
    weight_decay: float = 0.01  # AdamW weight decay
    temperature: float = 0.1  # InfoNCE softmax temperature over cosine similarities
    max_offset: int = MAX_OFFSET  # farthest same-clip negative, in frames either way
    min_negative_offset: int = 2  # nearest same-clip negative (closer offsets are left out of the loss)
    grad_clip: float = 1.0  # max global gradient norm
    val_every: int = 500  # validate every this many steps (and at the end)
    val_batches: int = 4  # fixed validation batches of `batch` anchors (for the validation loss)
    val_segment: int = 25  # frames per validation segment whose shift must be found (1 s)
    save_every: int = 500  # write last.pt every this many steps (and at the end)
    seed: int = 0  # model init and window sampling
    config: str = "default"  # network size: "tiny" (tests) or "default" (shipped)

    def __post_init__(self):  # verified once, here
        for name in ("steps", "batch", "val_every", "val_batches", "val_segment", "save_every",
                     "min_negative_offset"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.warmup < 0 or (self.lr_decay_steps is not None and self.lr_decay_steps < 1):
            raise UserError(f"warmup must be >= 0 and lr_decay_steps >= 1; got {self.warmup}, {self.lr_decay_steps}")
        if not self.min_negative_offset <= self.max_offset:
            raise UserError(f"min_negative_offset ({self.min_negative_offset}) must be <= max_offset "
                            f"({self.max_offset}), else no clip gives a negative of its own")
        if max(VAL_SHIFTS) > self.max_offset:
            raise UserError(f"max_offset must be >= {max(VAL_SHIFTS)} frames, the largest validation shift; "
                            f"got {self.max_offset}")
        if self.lr <= 0 or self.temperature <= 0:
            raise UserError(f"lr and temperature must be > 0; got {self.lr}, {self.temperature}")
        if self.config not in CONFIGS:
            raise UserError(f"config must be one of {sorted(CONFIGS)}; got {self.config!r}")

    @property
    def decay_steps(self) -> int:
        return self.lr_decay_steps or self.steps

    def model_config(self) -> SyncConfig:
        return CONFIGS[self.config]()

    def run_identity(self) -> dict:
        """What a resumed run must share with the checkpoint: all that shapes the weights (the LR horizon
        resolved), not where it stops nor how often it validates or saves."""
        values = asdict(self)
        for bookkeeping in ("steps", "val_every", "val_batches", "val_segment", "save_every"):
            values.pop(bookkeeping)
        values["lr_decay_steps"] = self.decay_steps
        return values


CONFIGS = {"tiny": SyncConfig.tiny, "default": SyncConfig}


def contrastive_loss(expert: SyncExpert, batch: SyncBatch, options: SyncOptions) -> Tensor:
    """InfoNCE: each audio window must pick its in-sync mouth window among its clip's shifted ones and the
    batch's other clips' in-sync ones."""
    B, K = batch.valid.shape
    R = options.max_offset
    audio = expert.embed_audio(batch.speech)  # (B, E)
    motion = expert.embed_motion(batch.mouth.flatten(0, 1)).view(B, K, -1)  # (B, K, E)
    offsets = torch.arange(-R, R + 1).abs()
    candidate = batch.valid & ((offsets == 0) | (offsets >= options.min_negative_offset))  # (B, K)
    own = torch.einsum("be,bke->bk", audio, motion).masked_fill(~candidate, -torch.inf)
    # Other anchors' in-sync mouths; the same clip's are left out (covered above, or near-positives).
    same_clip = batch.clip[:, None] == batch.clip[None, :]  # (B, B), the diagonal included
    others = (audio @ motion[:, R].T).masked_fill(same_clip, -torch.inf)
    logits = torch.cat([own, others], dim=1) / options.temperature
    return F.cross_entropy(logits, torch.full((B,), R))


def shift_motion(motion: np.ndarray, frames: int) -> np.ndarray:
    """Delay (frames > 0) or advance (< 0) a (T, ...) track, holding its first or last frame: the shifted track
    LAGS by `frames`, so sync_offsets should report +frames."""
    index = np.clip(np.arange(len(motion)) - frames, 0, len(motion) - 1)
    return motion[index]


@torch.no_grad()
def offset_accuracy(expert: SyncExpert, clips: Sequence[ClipData], segment: int,
                    max_offset: int = MAX_OFFSET, tracks: Sequence[np.ndarray] | None = None) -> dict:
    """Find known shifts: each clip's motion is shifted by VAL_SHIFTS in turn (per segment), cut into segments
    of `segment` frames (the last kept if at least half that), and searched over -max_offset..max_offset.
    `tracks`: the clips' speech tracks when at hand (else computed). Returns the share found exactly, within
    one frame, the mean |error| in frames, and the segments scored."""
    errors, k = [], 0
    for i, clip in enumerate(clips):
        audio = audio_embeddings(expert, clip.features, None if tracks is None else tracks[i])
        speech = clip.features.vad > SPEECH_VAD
        for start in range(0, len(clip.motion), segment):
            end = min(start + segment, len(clip.motion))
            if end - start < segment // 2 or not speech[start:end].any():
                continue
            shift = VAL_SHIFTS[k % len(VAL_SHIFTS)]
            k += 1
            motion = motion_embeddings(expert, shift_motion(clip.motion, shift)[start:end])
            found = sync_curve(audio[start:end], motion, speech[start:end], max_offset).offset_frames
            errors.append(abs(found - shift))
    errors = np.array(errors)
    if not len(errors):
        return {"accuracy": None, "within_1": None, "error": None, "segments": 0}
    return {"accuracy": float(np.mean(errors == 0)), "within_1": float(np.mean(errors <= 1)),
            "error": float(errors.mean()), "segments": len(errors)}


class Run:
    """Model, optimizer, schedule, sampling RNG and the step count: everything last.pt holds."""

    def __init__(self, options: SyncOptions):
        self.options = options
        self.config = options.model_config()
        with torch.random.fork_rng():  # seeded init without touching the caller's global RNG
            torch.manual_seed(options.seed)
            self.model = SyncExpert(self.config).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, options))
        self.rng = np.random.default_rng(options.seed)
        self.step = 0

    def train_step(self, windows: SyncWindows) -> float:
        loss = contrastive_loss(self.model, windows.sample(self.rng, self.options.batch), self.options)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.options.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return loss.item()

    def state(self) -> dict:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "step": self.step, "numpy_rng": self.rng.bit_generator.state,
            "options": asdict(self.options), "config": self.config.to_dict(),
        }

    def save(self, path: Path) -> None:
        save_state(self.state(), path)

    def load(self, path: Path) -> None:
        state = load_state(path, self.options)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.rng.bit_generator.state = state["numpy_rng"]
        self.step = state["step"]


@torch.no_grad()
def validate(run: Run, batches: list[SyncBatch], clips: Sequence[ClipData], tracks: Sequence[np.ndarray]) -> dict:
    """Validation loss on the fixed windows, and the shift search on the held-out voices' segments."""
    loss = float(np.mean([contrastive_loss(run.model, b, run.options).item() for b in batches]))
    found = offset_accuracy(run.model, clips, run.options.val_segment, run.options.max_offset, tracks)
    return {"val_loss": loss, "val_accuracy": found["accuracy"], "val_within_1": found["within_1"],
            "val_error": found["error"]}


def _plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot([r["step"] for r in records], [r["loss"] for r in records], lw=0.8, label="train")
    val = [r for r in records if "val_loss" in r]
    left.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="val")
    found = [r for r in val if r["val_accuracy"] is not None]
    right.plot([r["step"] for r in found], [r["val_accuracy"] for r in found], "o-", label="exact offset")
    right.plot([r["step"] for r in found], [r["val_within_1"] for r in found], "s-", label="within 1 frame")
    left.set(xlabel="step", ylabel="InfoNCE loss")
    right.set(xlabel="step", ylabel="share of val segments", ylim=(0, 1), title="offset found (held-out voices)")
    left.legend()
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def clip_tracks(data: str | Path, split: str, config: SyncConfig) -> tuple[list[ClipData], list[np.ndarray]]:
    """A split's clips (their speech tables dropped) and each one's speech_track, from the corpus's speech cache
    for config's layout (train.dataset: computed once and cached if missing)."""
    layout = config.layout()
    clips = load_clips(data, split, layout)
    tracks = [frame_track(c.speech, layout, len(c.features)) for c in clips]
    return [c._replace(speech=None) for c in clips], tracks


def train_sync(data: str | Path, out: str | Path, options: SyncOptions, progress: bool = True) -> Path:
    """Train (or continue training) until options.steps; returns the path of sync_expert.safetensors."""
    out = Path(out)
    run = Run(options)
    records = resume(run, out)

    train_clips, train_tracks = clip_tracks(data, "train", run.config)
    train_set = SyncWindows(train_clips, train_tracks, run.config, options.max_offset) if train_clips else []
    del train_tracks  # SyncWindows holds its own padded copy
    if not len(train_set):
        raise UserError(f"the train split of {data} has no speech frames; build a corpus with "
                        "`avatar data synth --out DIR --hours H --seed S`")
    val_clips, val_tracks = clip_tracks(data, "val", run.config)
    val_set = SyncWindows(val_clips, val_tracks, run.config, options.max_offset) if val_clips else []
    rng = np.random.default_rng(VAL_SEED)
    val_batches = [val_set.sample(rng, options.batch) for _ in range(options.val_batches)] if len(val_set) else []
    if not val_batches:
        print(f"warning: {data} has no validation speech; training without validation", file=sys.stderr)

    def postfix(record: dict) -> dict:
        shown = {"loss": f"{record['loss']:.3f}"}
        if record.get("val_accuracy") is not None:
            shown["val_acc"] = f"{record['val_accuracy']:.2f}"
        return shown

    train_steps(run, options, out, records, step=lambda: run.train_step(train_set),
                validate=(lambda: validate(run, val_batches, val_clips, val_tracks)) if val_batches else None,
                postfix=postfix, desc="sync expert", progress=progress)

    manifest = Path(data) / "manifest.json"
    tail = records[-min(len(records), 50):]
    val = [r for r in records if "val_loss" in r]
    metrics = {k: val[-1][k] for k in ("val_loss", "val_accuracy", "val_within_1", "val_error")} if val else {}
    weights = save_checkpoint(
        out / "sync_expert.safetensors", run.model, run.config,
        data=str(manifest), data_sha256=sha256_file(manifest), seed=options.seed, steps=run.step,
        train_loss=float(np.mean([r["loss"] for r in tail])) if tail else None, options=asdict(options), **metrics,
    )
    if records:
        _plot(records, out / "loss.png")
    return weights


# ------------------------------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> int:
    defaults = SyncOptions()
    parser = argparse.ArgumentParser(
        prog="avatar train sync",
        description="Train the lip-sync expert (SyncNet-like, DESIGN.md §7) on a synthetic corpus: two small "
                    "encoders embed a 200 ms window of speech-encoder features and the mouth/jaw motion window; each audio window "
                    "learns to pick its own mouth window over the same clip shifted by 2..max-offset frames "
                    "and over other clips. It scores lip sync for `avatar eval lipsync` and the RL reward. "
                    "Validation finds known shifts in held-out voices' clips. Kill it at any time: rerunning "
                    "the same command continues from last.pt.",
        epilog="Example: avatar data synth --out data/synth --hours 1 --seed 0 && "
               "avatar train sync --data data/synth --out ckpt/sync (~15 min on one CPU core for 1.5 h of corpus). "
               "Writes ckpt/sync/sync_expert.safetensors (load with train.sync_expert.load_expert), "
               "ckpt/sync/last.pt (resume state), ckpt/sync/log.jsonl and ckpt/sync/loss.png. "
               "Set OMP_NUM_THREADS=1 to leave the other core free.",
    )
    add_run_arguments(parser, defaults, CONFIGS)
    parser.add_argument("--batch", type=int, default=defaults.batch, help=f"anchors per step ({defaults.batch})")
    parser.add_argument("--temperature", type=float, default=defaults.temperature,
                        help=f"InfoNCE temperature ({defaults.temperature})")
    parser.add_argument("--max-offset", type=int, default=defaults.max_offset,
                        help=f"farthest same-clip negative in frames, either way ({defaults.max_offset})")
    args = parser.parse_args(argv)
    try:
        options = SyncOptions(
            steps=args.steps, batch=args.batch, lr=args.lr, warmup=args.warmup, lr_decay_steps=args.lr_decay_steps,
            temperature=args.temperature, max_offset=args.max_offset, val_every=args.val_every,
            save_every=args.save_every, seed=args.seed, config=args.config,
        )
        path = train_sync(args.data, args.out, options, progress=not args.no_progress)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
