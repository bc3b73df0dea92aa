"""The motion generator network: a flow-matching transformer over chunks of motion (DESIGN.md §6).

One call maps a chunk of L noisy motion frames x_t (normalized motion space, engine.motion.spec)
at flow time t to a velocity, conditioned per frame on:
- audio, at three levels mixed in every block by learnable level selectors (softmax weights):
  local phonetic (the speech encoder's tokens, engine.audio.speech, of the frame and its
  neighbours: P past frames, K lookahead frames), local prosodic (energy, F0, voicing, VAD over
  the same neighbourhood) and
  global (running utterance statistics, a small state vector the caller keeps);
- emotion (7 classes, or index `NO_EMOTION` = 7 for "none", the classifier-free-guidance null);
- the avatar's reference (neutral) motion and the flow time t.
Each frame's condition vector modulates that frame's tokens (frame-wise AdaLN: shift, scale and
a zero-initialised gate), so at initialisation every block is the identity.

Attention: the L chunk frames attend bidirectionally to each other and to the W committed frames
in the KV cache (engine.motion.cache), with a learned per-head bias by frame distance (initialised
ALiBi-like) and a validity mask. After sampling, `commit` runs the clean chunk once at t = 1 and
pushes its keys/values. A committed chunk attends only to itself, so its keys/values depend on
that chunk alone: the cache holds exactly what recomputing the last W frames from scratch gives,
per-chunk cost is constant, and training can compute all clean context in one parallel pass.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.audio.speech import TOKENS_PER_FRAME, WhisperEncoderConfig
from engine.motion import spec
from engine.motion.baseline import EMOTIONS
from engine.motion.cache import KVCache

NO_EMOTION = len(EMOTIONS)  # emotion index meaning "none" (dropped for classifier-free guidance)
N_PROSODY = 4  # prosody channels per frame: energy, log-F0, voicing, VAD (engine.motion.generator)
N_STATS = 8  # global utterance statistics: running mean and std of the 4 prosody channels


@dataclass(frozen=True)
class MotionConfig:
    chunk: int = 4  # L: frames generated per step
    lookahead: int = 2  # K: future audio frames each chunk may hear (latency floor (L+K) x 40 ms)
    audio_past: int = 2  # P: past audio frames the local audio encoders hear
    context: int = 48  # W: committed frames held in the KV cache (1.92 s at 25 fps)
    d_model: int = 160  # width of the tokens and condition vectors
    n_heads: int = 4  # attention heads (d_model must divide evenly)
    n_layers: int = 4  # transformer blocks
    mlp_ratio: int = 4  # MLP hidden width / d_model
    speech_dim: int = WhisperEncoderConfig.d_model  # width of a speech-encoder token
    speech_tokens: int = TOKENS_PER_FRAME  # speech-encoder tokens per video frame
    # The speech encoder hears this many video frames of mel per chunk, ending with the lookahead, through its
    # first speech_layers blocks (4: all, with the final norm). Linear probes on held-out voices
    # (benchmarks/results/speech_probe.md): 1 s, 4 blocks r 0.898 at 10 ms a chunk; 2 s 0.907 at 16 ms.
    speech_window: int = 25
    speech_layers: int = 4
    n_prosody: int = N_PROSODY  # prosody channels per frame
    n_stats: int = N_STATS  # size of the global utterance-statistics vector
    n_emotions: int = NO_EMOTION + 1  # emotion classes including "none"
    motion_dim: int = spec.D  # D: motion coefficients per frame

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        if not 1 <= self.chunk <= self.context:
            raise ValueError(f"chunk ({self.chunk}) must be at least 1 and at most the cache window ({self.context})")
        if self.lookahead < 0 or self.audio_past < 0:
            raise ValueError(f"lookahead ({self.lookahead}) and audio_past ({self.audio_past}) must be >= 0")
        if self.speech_window < self.audio_frames:
            raise ValueError(f"speech_window ({self.speech_window}) must cover the chunk's {self.audio_frames} audio "
                             "frames (P + L + K)")
        if self.n_emotions != NO_EMOTION + 1:
            raise ValueError(f"n_emotions must be {NO_EMOTION + 1} ({', '.join(EMOTIONS)} and none)")

    @property
    def audio_frames(self) -> int:
        """Audio frames one chunk reads: P past + L chunk + K lookahead."""
        return self.audio_past + self.chunk + self.lookahead

    @staticmethod
    def tiny() -> MotionConfig:
        """For tests: runs in milliseconds on a CPU."""
        return MotionConfig(chunk=4, lookahead=2, audio_past=1, context=8, d_model=32, n_heads=2, n_layers=2,
                            speech_window=8, speech_layers=1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> MotionConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown MotionConfig fields {sorted(unknown)}: the checkpoint is newer than this code")
        return cls(**values)


class Conditions(NamedTuple):
    """Everything a chunk is conditioned on, batched along B (A = P + L + K audio frames)."""

    speech: Tensor  # (B, A, speech_tokens, speech_dim) speech-encoder tokens (engine.audio.speech)
    prosody: Tensor  # (B, A, n_prosody) engine.motion.generator.prosody_features
    stats: Tensor  # (B, n_stats) running utterance statistics at the chunk's start
    audio_on: Tensor  # (B,) bool: False drops the audio (classifier-free guidance)
    emotion: Tensor  # (B,) int64 in [0, n_emotions); NO_EMOTION = none
    ref: Tensor  # (B, D) the avatar's reference (neutral) motion, normalized


class Embedded(NamedTuple):
    """A chunk's conditions after the encoders (MotionTransformer.embed): all but the flow time."""

    levels: Tensor  # (B, L, 3, d) per-frame phonetic, prosodic and global audio (null vectors if dropped)
    static: Tensor  # (B, d) emotion + reference embedding


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """(B,) flow times in [0, 1] -> (B, dim) sinusoids."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def modulate(x: Tensor, shift: Tensor, gain: Tensor) -> Tensor:
    """AdaLN's x (1 + scale) + shift, with gain = 1 + scale already out of `adaln` below."""
    return x * gain + shift


def adaln(layer: nn.Linear, c: Tensor, ones: Tensor) -> Tensor:
    """The AdaLN layer's output with 1 added to its scale rows (`ones`: 1 there, 0 elsewhere): added
    to the bias, one constant per layer in an exported graph, not an add per token and modulation."""
    return F.linear(c, layer.weight, layer.bias + ones)


def _ones_at(parts: int, at: tuple[int, ...], d: int) -> Tensor:
    """(parts * d,) ones in the `at` parts of a modulation vector, zeros elsewhere."""
    return torch.zeros(parts, d).index_fill_(0, torch.tensor(at), 1.0).flatten()


class LocalAudioEncoder(nn.Module):
    """Per-frame features -> (B, L, d): an MLP per frame, then one 'valid' convolution whose
    kernel spans P past + the frame + K lookahead frames, so A audio frames give L outputs."""

    def __init__(self, in_dim: int, config: MotionConfig):
        super().__init__()
        d = config.d_model
        self.frame = nn.Sequential(nn.Linear(in_dim, d), nn.GELU())
        self.window = nn.Conv1d(d, d, kernel_size=config.audio_past + 1 + config.lookahead)

    def forward(self, feats: Tensor) -> Tensor:  # (B, A, in_dim)
        h = self.frame(feats)  # (B, A, d)
        # The convolution as one matrix product over each output frame's window of frames (the
        # same sums; a fraction of the time of ONNX Runtime's and torch's Conv at these sizes).
        # Slices stacked, not Tensor.unfold: the ONNX exporter cannot give unfold a dynamic batch.
        A, k = h.shape[1], self.window.kernel_size[0]
        windows = torch.stack([h[:, j : j + A - k + 1] for j in range(k)], dim=-1).flatten(2)  # (B, L, d k), as the weight
        return F.linear(windows, self.window.weight.flatten(1), self.window.bias)  # (B, L, d)


class Block(nn.Module):
    """Frame-wise AdaLN transformer block with its own audio level selector and distance bias."""

    def __init__(self, config: MotionConfig):
        super().__init__()
        d, h = config.d_model, config.n_heads
        self.n_heads = h
        self.level_logits = nn.Parameter(torch.zeros(3))  # phonetic, prosodic, global
        self.adaln = nn.Linear(d, 6 * d)  # per-frame condition -> shift/scale/gate for attention and MLP
        nn.init.zeros_(self.adaln.weight)
        nn.init.zeros_(self.adaln.bias)
        self.register_buffer("gain_ones", _ones_at(6, (1, 4), d), persistent=False)  # scale1, scale2
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(d, config.mlp_ratio * d), nn.GELU(), nn.Linear(config.mlp_ratio * d, d))
        # Learned attention bias per head and frame distance q - k in [-(L-1), W+L-1]; at init ALiBi-like:
        # -slope_h * |distance| / L, so the flattest head still sees the whole window.
        self.offset = config.chunk - 1  # index of distance 0 in the table
        dist = torch.arange(-(config.chunk - 1), config.context + config.chunk).float()
        slopes = 2.0 ** (-8.0 * torch.arange(1, h + 1).float() / h)
        self.rel_bias = nn.Parameter(-slopes[:, None] * dist.abs()[None] / config.chunk)  # (h, n_dist)

    def forward(self, x: Tensor, levels: Tensor, shared: Tensor, dist: Tensor, valid: Tensor,
                past_k: Tensor, past_v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B*L, d): the chunk's tokens, flat (see MotionTransformer._run); levels (B*L, 3, d) and
        shared (B*L, d) per token; dist (B, L, W+L), valid (B, W+L), past_k/v (B, h, W, hd)."""
        T, d = x.shape
        (shift1, gain1, gate1, shift2, gain2, gate2), (q, k, v) = self._heads(x, levels, shared, past_k.shape[0])
        keys = torch.cat([past_k, k], dim=2)  # (B, h, W+L, hd)
        values = torch.cat([past_v, v], dim=2)
        # the distance bias, with the invisible keys at -inf
        bias = self.rel_bias[:, dist + self.offset].transpose(0, 1)  # (B, h, L, W+L)
        bias = bias.masked_fill(~valid[:, None, None, :], float("-inf"))
        att = ((q @ keys.transpose(-2, -1)) / math.sqrt(d // self.n_heads) + bias).softmax(dim=-1)  # (B, h, L, W+L)
        y = (att @ values).transpose(1, 2).reshape(T, d)  # (B*L, d)
        x = x + gate1 * self.proj(y)
        x = x + gate2 * self.mlp(modulate(self.norm2(x), shift2, gain2))
        return x, k, v

    def keys_values(self, x: Tensor, levels: Tensor, shared: Tensor, batch: int) -> tuple[Tensor, Tensor]:
        """Only the keys and values (B, h, L, hd) of the tokens x (`forward`'s): all a commit reads
        from the last block, whose attention and MLP outputs nothing would use."""
        return self._heads(x, levels, shared, batch)[1][1:]

    def _heads(self, x: Tensor, levels: Tensor, shared: Tensor, batch: int):
        """The six AdaLN modulations (B*L, d) and the tokens' q, k, v (B, h, L, hd)."""
        h, (T, d) = self.n_heads, x.shape
        # Per-frame condition: this block's mix of the audio levels plus emotion/reference/time.
        audio = torch.einsum("tnd,n->td", levels, self.level_logits.softmax(0))  # (B*L, d)
        c = F.silu(audio + shared)  # (B*L, d)
        mods = adaln(self.adaln, c, self.gain_ones).chunk(6, dim=-1)
        # one head split of the three (qkv's columns are q | k | v, head by head)
        qkv = self.qkv(modulate(self.norm1(x), mods[0], mods[1]))
        return mods, qkv.view(batch, T // batch, 3 * h, d // h).transpose(1, 2).split(h, dim=1)


class MotionTransformer(nn.Module):
    def __init__(self, config: MotionConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.x_in = nn.Linear(config.motion_dim, d)
        self.phonetic = LocalAudioEncoder(config.speech_tokens * config.speech_dim, config)
        self.prosodic = LocalAudioEncoder(config.n_prosody, config)
        self.global_stats = nn.Sequential(nn.Linear(config.n_stats, d), nn.GELU(), nn.Linear(d, d))
        self.null_audio = nn.Parameter(torch.zeros(3, d))  # each level's stand-in when audio is dropped
        self.emotion = nn.Embedding(config.n_emotions, d)
        self.ref_in = nn.Linear(config.motion_dim, d)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.final_adaln = nn.Linear(d, 2 * d)  # per-frame shift/scale before the output layer
        nn.init.zeros_(self.final_adaln.weight)
        nn.init.zeros_(self.final_adaln.bias)
        self.register_buffer("gain_ones", _ones_at(2, (1,), d), persistent=False)
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.out = nn.Linear(d, config.motion_dim)

    def embed(self, cond: Conditions) -> Embedded:
        """Encode a chunk's conditions: they are the same for every Euler step and the commit, so the
        sampler encodes them once per chunk instead of once per network call."""
        B, A = cond.speech.shape[:2]
        cfg = self.config
        if A != cfg.audio_frames:
            raise ValueError(f"expected {cfg.audio_frames} audio frames (P={cfg.audio_past} + L={cfg.chunk} + "
                             f"K={cfg.lookahead}); got {A}")
        # Audio levels per frame, each (B, L, d), stacked -> (B, L, 3, d); dropped audio uses null vectors.
        phonetic = self.phonetic(cond.speech.flatten(2))  # speech (B, A, 2*384) -> (B, L, d)
        prosodic = self.prosodic(cond.prosody)  # (B, L, d)
        global_ = self.global_stats(cond.stats)[:, None].expand(B, cfg.chunk, -1)  # (B, L, d)
        levels = torch.stack([phonetic, prosodic, global_], dim=2)  # (B, L, 3, d)
        levels = torch.where(cond.audio_on[:, None, None, None], levels, self.null_audio)
        return Embedded(levels, self.emotion(cond.emotion) + self.ref_in(cond.ref))

    def _run(self, x: Tensor, t: Tensor, cond: Conditions | Embedded, cache: KVCache, output: bool = True
             ) -> tuple[Tensor | None, Tensor, Tensor]:
        """(B, L, D) chunk -> (B, L, D) output (None unless `output`) and the chunk's (layers, B, heads,
        L, hd) keys/values."""
        B, L, _ = x.shape
        cfg = self.config
        if L != cfg.chunk:
            raise ValueError(f"expected a chunk of {cfg.chunk} frames; got {L}")
        levels, static = cond if isinstance(cond, Embedded) else self.embed(cond)
        # The blocks see the chunk's B*L tokens as one flat batch: every linear is then a plain 2-D
        # matrix product, which ONNX Runtime runs without reshaping in and out of each one.
        levels = levels.flatten(0, 1)  # (B*L, 3, d)
        shared = static + self.time_mlp(timestep_embedding(t, cfg.d_model))  # (B, d): every frame
        shared = shared[:, None].expand(B, L, cfg.d_model).reshape(B * L, cfg.d_model)  # (B*L, d)

        # Relative frame distances query - key over [cache slots, chunk frames], and which keys are visible.
        q_pos = cache.next_frame() + torch.arange(L, device=x.device)  # (B, L)
        k_pos = torch.cat([cache.pos, q_pos], dim=1)  # (B, W+L)
        dist = (q_pos[:, :, None] - k_pos[:, None, :]).clamp(-(L - 1), cfg.context + L - 1)  # (B, L, W+L)
        valid = torch.cat([cache.valid, torch.ones_like(q_pos, dtype=torch.bool)], dim=1)  # (B, W+L)

        h = self.x_in(x.reshape(B * L, -1))  # (B*L, d)
        new_k, new_v = [], []
        for i, block in enumerate(self.blocks):
            if not output and i == len(self.blocks) - 1:
                k, v = block.keys_values(h, levels, shared, B)
            else:
                h, k, v = block(h, levels, shared, dist, valid, cache.keys[i], cache.values[i])
            new_k.append(k)
            new_v.append(v)
        if not output:
            return None, torch.stack(new_k), torch.stack(new_v)
        shift, gain = adaln(self.final_adaln, F.silu(levels.mean(1) + shared), self.gain_ones).chunk(2, dim=-1)
        out = self.out(modulate(self.norm_out(h), shift, gain))  # (B*L, D)
        return out.view(B, L, -1), torch.stack(new_k), torch.stack(new_v)

    def forward(self, x_t: Tensor, t: Tensor, cond: Conditions | Embedded, cache: KVCache) -> Tensor:
        """Velocity (B, L, D) of the noisy chunk x_t (B, L, D) at flow times t (B,); `cond` raw or embedded."""
        return self._run(x_t, t, cond, cache)[0]

    def commit(self, clean: Tensor, cond: Conditions | Embedded, cache: KVCache) -> KVCache:
        """Run the clean chunk (B, L, D) once at t = 1, seeing only itself, and push its keys/values."""
        t = torch.ones(clean.shape[0], device=clean.device)
        _, k, v = self._run(clean, t, cond, cache.hidden(), output=False)
        return cache.push(k, v)
