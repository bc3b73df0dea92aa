"""GRPO rollouts of the streaming generator (DESIGN.md §8): G samples of a prompt, chunk by chunk against the
KV cache, with SDE steps whose log-probabilities the trainer's ratios are made of.

    prompts = load_prompts("data/synth", "train", count=16, seed=0)
    rollout = Rollouter(model, RolloutOptions(group=16)).rollout(prompts[0], torch.Generator().manual_seed(0))
    logp, mean, std = replay(model, rollout.chunks[0], options)  # == rollout.chunks[0].log_probs, exactly

A chunk is sampled as the engine samples it (engine.backends.eager.chunk_step: embed the conditions once,
steps from t = 0 to 1, clamp, commit), except that the trained steps are stochastic: x' ~ N(mean, std^2) from
engine.motion.sampler.sde_mean_std with noise level a, and the other steps are the Euler ODE (a = 0). Noise
only where we train (MixGRPO's choice): the spread between a group's samples then comes from the steps whose
log-probs carry the gradient, and the untrained last step adds no jitter to the motion. The first step is
never stochastic (the SDE's noise scale diverges at t = 0), nor is the last trained.

Each chunk's record keeps what its log-probs depend on: the conditions, the KV cache before it (committed by
the policy that rolled out: the context is part of the state, never recomputed), x at every step time. So
`replay` recomputes the log-probs, and the trainer the new policy's, exactly. Log-probs are a mean over the
chunk's L x D dimensions (Flow-GRPO's convention; PPO clip ranges ~1e-4..1e-3 are for this scale).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from engine.audio.frontend import AudioFeatures, extract_features
from engine.backends.eager import TorchStep
from engine.errors import UserError
from engine.motion import spec
from engine.motion.cache import KVCache
from engine.motion.generator import StreamingGenerator, silence
from engine.motion.model import Conditions, Embedded, MotionTransformer
from engine.motion.sampler import SamplerOptions, guidance_batch, guided_velocity, sde_mean_std
from engine.timebase import FPS, SAMPLES_PER_FRAME


@dataclass(frozen=True)
class RolloutOptions:
    group: int = 16  # G samples per prompt (12-24 in the anchors; advantages are normalised within it)
    steps: int = 4  # sampler steps per chunk, t = 0, 1/steps, ..., 1
    noise_level: float = 0.7  # a: the SDE's noise scale on the trained steps
    train_steps: tuple[int, ...] = (1, 2)  # stochastic, trained steps: never 0 (t = 0) nor steps - 1 (the last)
    guidance_audio: float = 1.0  # 1 with guidance_emotion 1: rolled out without CFG (one call, not three)
    guidance_emotion: float = 1.0

    def __post_init__(self):
        if self.group < 2:
            raise UserError(f"group must be >= 2 (advantages compare samples of one prompt); got {self.group}")
        SamplerOptions(self.steps, self.guidance_audio, self.guidance_emotion)  # its own checks
        steps = tuple(self.train_steps)
        object.__setattr__(self, "train_steps", steps)
        if not steps or sorted(set(steps)) != list(steps) or steps[0] < 1 or steps[-1] > self.steps - 2:
            raise UserError(f"train_steps must be increasing step indices in 1..{self.steps - 2} (step 0 starts at "
                            f"t = 0 where the SDE is singular; the last step is never trained); got {steps}. "
                            "Use steps >= 3")
        if not self.noise_level > 0:
            raise UserError(f"noise_level must be > 0 (the policy needs a density); got {self.noise_level}")

    @property
    def sampler(self) -> SamplerOptions:
        return SamplerOptions(self.steps, self.guidance_audio, self.guidance_emotion)

    def noise(self, k: int) -> float:
        """The noise level of step k: a on trained steps, 0 (Euler) elsewhere."""
        return self.noise_level if k in self.train_steps else 0.0

    def times(self, k: int) -> tuple[float, float]:
        return k / self.steps, (k + 1) / self.steps


@dataclass(frozen=True, eq=False)
class Prompt:
    """What a rollout is conditioned on: a clip of speech and an emotion (the portrait is the reward's)."""

    name: str  # where it came from, for logs
    audio: np.ndarray  # (N,) float32 at 16 kHz, a whole number of frames
    features: AudioFeatures  # extract_features(audio)
    emotion: str
    transcript: str | None = None
    # (T, spec.D) the motion the corpus made this audio with, where known; shorter than T after with_pause: the
    # appended silence has no target
    target: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.features)


class ChunkRecord(NamedTuple):
    """One chunk of a group's rollout: everything its log-probs depend on (G samples along B)."""

    cond: Conditions  # B = 1: the group shares the audio and emotion
    cache: KVCache  # (layers, G, ...) the cache the chunk attended to
    xs: Tensor  # (steps + 1, G, L, D) x at t = k / steps; xs[0] the initial noise, xs[-1] before the clamp
    log_probs: Tensor  # (len(train_steps), G) log-probability of each trained step's x_{k+1}, mean over dims


@dataclass(eq=False)
class Rollout:
    prompt: Prompt
    chunks: list[ChunkRecord]
    motion: np.ndarray  # (G, T, D) raw clipped motion, what the rewards score

    @property
    def log_probs(self) -> Tensor:
        """(G, chunks, trained steps)."""
        return torch.stack([c.log_probs for c in self.chunks]).permute(2, 0, 1)


def gaussian_log_prob(x: Tensor, mean: Tensor, std: float) -> Tensor:
    """(B,) log N(x; mean, std^2) per dimension, averaged over the dimensions of x (B, ...)."""
    logp = -((x - mean) ** 2) / (2 * std * std) - math.log(std) - 0.5 * math.log(2 * math.pi)
    return logp.flatten(1).mean(1)


def embed(model: MotionTransformer, cond: Conditions, batch: int, sampler: SamplerOptions) -> Embedded:
    """The chunk's conditions (B = 1) embedded for `batch` samples (their guidance batch when guided)."""
    cond = Conditions(*(c.expand(batch, *c.shape[1:]) for c in cond))
    return model.embed(guidance_batch(cond) if sampler.guided else cond)


def velocity(model: MotionTransformer, x: Tensor, t: float, emb: Embedded, cache: KVCache,
             sampler: SamplerOptions) -> Tensor:
    """The (guided) velocity at x (B, L, D), as engine.motion.sampler.sample computes it."""
    tt = torch.full((x.shape[0],), t, device=x.device)
    if sampler.guided:
        return guided_velocity(model, x, tt, emb, cache.repeat(3), sampler)
    return model(x, tt, emb, cache)


def step_mean(model: MotionTransformer, x: Tensor, cache: KVCache, emb: Embedded, k: int, options: RolloutOptions
              ) -> tuple[Tensor, float]:
    """Mean (G, L, D) and std of step k's transition from x_k (G, L, D)."""
    t, t_next = options.times(k)
    return sde_mean_std(x, velocity(model, x, t, emb, cache, options.sampler), t, t_next, options.noise(k))


def replay(model: MotionTransformer, chunk: ChunkRecord, options: RolloutOptions
           ) -> tuple[Tensor, Tensor, list[float]]:
    """`model`'s log-probs (trained steps, G) of the recorded transitions, their means (trained steps, G, L, D)
    and stds: the rollout's own numbers when `model` is the policy that rolled out."""
    emb = embed(model, chunk.cond, chunk.xs.shape[1], options.sampler)
    logps, means, stds = [], [], []
    for k in options.train_steps:
        mean, std = step_mean(model, chunk.xs[k], chunk.cache, emb, k, options)
        logps.append(gaussian_log_prob(chunk.xs[k + 1], mean, std))
        means.append(mean)
        stds.append(std)
    return torch.stack(logps), torch.stack(means), stds


class Rollouter:
    """Samples groups from `model` (a MotionTransformer, LoRA-wrapped or not) and keeps their records."""

    def __init__(self, model: MotionTransformer, options: RolloutOptions):
        self.model = model
        self.options = options
        self.config = model.config
        self._encoder = TorchStep(model)  # for its speech encoder: the conditions are the engine's own

    def conditions(self, prompt: Prompt) -> list[Conditions]:
        """Every chunk's conditions (B = 1) as the streaming generator makes them (the end padded with silence)."""
        L, K, T = self.config.chunk, self.config.lookahead, len(prompt)
        padded = AudioFeatures.concat([prompt.features, silence(-T % L + K)])
        stream = StreamingGenerator(self._encoder)
        out = []
        for s in range(0, T, L):
            out.append(stream.conditions(padded[s : s + L + K], prompt.emotion))
            stream.advance(padded[s : s + L + K])
        return out

    @torch.no_grad()
    def rollout(self, prompt: Prompt, gen: torch.Generator, conditions: list[Conditions] | None = None) -> Rollout:
        """G samples of `prompt` (noise from `gen`); `conditions`: self.conditions(prompt), when cached."""
        opts, cfg, model = self.options, self.config, self.model
        G, device = opts.group, self._encoder.device
        cache = KVCache.empty(cfg, G, device)
        chunks, clean_chunks = [], []
        for cond in conditions if conditions is not None else self.conditions(prompt):
            emb = embed(model, cond, G, opts.sampler)
            x = torch.randn(G, cfg.chunk, cfg.motion_dim, generator=gen, device=device)
            xs, logps = [x], []
            for k in range(opts.steps):
                mean, std = step_mean(model, x, cache, emb, k, opts)
                if std > 0:
                    x = mean + std * torch.randn(mean.shape, generator=gen, device=device)
                    logps.append(gaussian_log_prob(x, mean, std))
                else:
                    x = mean
                xs.append(x)
            clean = x.clamp(-1.0, 1.0)
            chunks.append(ChunkRecord(cond, cache, torch.stack(xs), torch.stack(logps)))
            commit_emb = Embedded(*(e[-G:] for e in emb)) if opts.sampler.guided else emb
            cache = model.commit(clean, commit_emb, cache)
            clean_chunks.append(clean)
        motion = spec.clip(spec.denormalize(torch.cat(clean_chunks, dim=1).cpu().numpy()))[:, : len(prompt)]
        return Rollout(prompt, chunks, motion)


def crop_prompt(name: str, audio: np.ndarray, emotion: str, transcript: str | None, start: int, frames: int,
                motion: np.ndarray | None = None) -> Prompt:
    """Frames [start, start + frames) of a clip (and of its target `motion`, if given) as a prompt (its features
    extracted on the crop itself)."""
    crop = np.ascontiguousarray(audio[start * SAMPLES_PER_FRAME : (start + frames) * SAMPLES_PER_FRAME], np.float32)
    features = extract_features(crop)
    target = None if motion is None else np.asarray(motion[start : start + len(features)], np.float32)
    if target is not None and len(target) != len(features):
        raise UserError(f"{name}: the clip's motion has {len(motion)} frames, too few for its audio's "
                        f"{start + len(features)}; rebuild the corpus with `avatar data synth`")
    return Prompt(name, crop, features, emotion, transcript, target)


def with_pause(prompt: Prompt, seconds: float) -> Prompt:
    """`prompt` followed by `seconds` of digital silence (a microphone gone quiet), its features extracted over the
    whole and its target kept as it was (covering the speech only)."""
    audio = np.concatenate([prompt.audio, np.zeros(round(seconds * FPS) * SAMPLES_PER_FRAME, np.float32)])
    return Prompt(f"{prompt.name}+{seconds:g}s", audio, extract_features(audio), prompt.emotion, prompt.transcript,
                  prompt.target)


def load_prompts(directory: str | Path, split: str = "train", count: int = 16, min_seconds: float = 2.0,
                 max_seconds: float = 4.0, seed: int = 0) -> list[Prompt]:
    """`count` prompts from a synthetic corpus split (train.synth.corpus): crops of 2-4 s of distinct clips
    (seeded), with the clip's emotion, its target motion, and text (a crop's transcript is unknown, so None)."""
    from train.synth.corpus import load_shard

    directory = Path(directory)
    manifest = directory / "manifest.json"
    if not manifest.is_file():
        raise UserError(f"{manifest} does not exist; build a corpus with `avatar data synth --out {directory}`")
    shards = [s["file"] for s in json.loads(manifest.read_text())["shards"] if s["split"] == split]
    min_frames = round(min_seconds * FPS)
    clips = [(f"{name}#{i}", c) for name in shards for i, c in enumerate(load_shard(directory / name))
             if len(c["audio"]) // SAMPLES_PER_FRAME >= min_frames]
    if len(clips) < count:
        raise UserError(f"the {split} split of {directory} has {len(clips)} clips of >= {min_seconds} s; {count} "
                        "prompts need more: build a larger corpus or ask for fewer prompts")
    rng = np.random.default_rng(seed)
    prompts = []
    for i in rng.choice(len(clips), size=count, replace=False):
        name, clip = clips[i]
        total = len(clip["audio"]) // SAMPLES_PER_FRAME
        frames = int(rng.integers(min_frames, min(total, round(max_seconds * FPS)) + 1))
        start = int(rng.integers(total - frames + 1))
        prompts.append(crop_prompt(f"{name}@{start}", clip["audio"], clip["emotion"], None, start, frames,
                                   clip["motion"]))
    return prompts
