"""The reward-free objective (`avatar rl train --objective dpo`): Flow-DPO on corpus windows, no reward model, no
judge.

ReFree-S2V's exact objective is not public; this is what we chose, in its spirit. Each pair shares a training
window of the synthetic corpus (the clean context committed to the cache, the chunk's audio and emotion, as
train.pretrain sees it): the winner is the real target chunk, the loser that target corrupted in one of the
ways RL is meant to fix (rl.rewards' guards and temporal terms name them):

    shift        the motion late by 2-4 frames (the context's last frames in front): lips out of sync
    jitter       Gaussian noise (0.15 in normalized units) on every frame: a shaking, popping face
    frozen_head  the head held at the context's last pose: the "head barely moves" failure
    smooth       the chunk pulled 80 % of the way to its mean: under-articulated lips
    self         the policy's own sample of the chunk (no gradient; the rollout's sampler, in the window's context):
                 what the generator does today, whatever its faults (SPIN-style self-play; `dpo_self` of the batch)

Winner and loser share the flow time t and the noise eps (Diffusion-DPO / Flow-DPO), and the loss is

    gap  = (e_theta(w) - e_ref(w)) - (e_theta(l) - e_ref(l)),   e(x) = mean over dims ||v(x_t) - (x - eps)||^2
    loss = -log sigmoid(-beta gap)

so the policy learns to fit the winners better than the frozen reference does, relative to the losers. The
reference is the policy with its adapters off (rl.policy). DiffusionNFT (the other reward-free option with
working code elsewhere) needs self-samples scored as positive or negative: not implemented here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from engine.backends.eager import chunk_step
from engine.motion import spec
from engine.motion.model import Conditions, Embedded, MotionConfig, MotionTransformer
from engine.motion.sampler import SamplerOptions
from rl.policy import Policy

CORRUPTIONS = ("shift", "jitter", "frozen_head", "smooth")
_HEAD = [spec.index(n) for n in spec.NAMES if n.startswith("head")]


def corrupt(target: Tensor, context: Tensor, kinds: np.ndarray, rng: np.random.Generator) -> Tensor:
    """(B, L, D) normalized losers: row b of `target` corrupted by CORRUPTIONS[kinds[b]]; `context` (B, W, D) the
    clean frames before it."""
    out = target.clone()
    L = target.shape[1]
    for b, kind in enumerate(CORRUPTIONS[k] for k in kinds):
        if kind == "shift":
            k = int(rng.integers(2, 5))
            out[b] = torch.cat([context[b, -k:], target[b]])[:L]
        elif kind == "jitter":
            out[b] = target[b] + 0.15 * torch.from_numpy(rng.standard_normal(target[b].shape).astype(np.float32))
        elif kind == "frozen_head":
            out[b, :, _HEAD] = context[b, -1, _HEAD]
        else:
            out[b] = target[b].lerp(target[b].mean(0, keepdim=True), 0.8)
    return out.clamp(-1.0, 1.0)


def conditions(batch) -> Conditions:
    """The windows' chunk conditions (audio on), as train.pretrain sees them."""
    B = batch.target.shape[0]
    return Conditions(batch.speech, batch.prosody, batch.stats, torch.ones(B, dtype=torch.bool), batch.emotion,
                      batch.ref)


@torch.no_grad()
def self_samples(model: MotionTransformer, batch, sampler: SamplerOptions, gen: torch.Generator) -> Tensor:
    """(B, L, D) the model's own clean chunks for the windows, sampled as the engine samples them."""
    from train.pretrain import context_cache

    noise = torch.randn(batch.target.shape, generator=gen)
    return chunk_step(model, sampler, conditions(batch), noise, context_cache(model, batch))[0]


def flow_errors(model: MotionTransformer, batch, pair: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """(2, B) flow-matching errors (mean over dims) of the winners and losers `pair` (2, B, L, D) at shared t, eps."""
    from train.pretrain import context_cache

    with torch.no_grad():  # the context is given, as in a rollout: its commit is not what is trained here
        cache = context_cache(model, batch)
    emb = model.embed(conditions(batch))
    emb2 = Embedded(*(torch.cat([e, e]) for e in emb))
    x1 = pair.flatten(0, 1)  # (2B, L, D): winners then losers
    t2, eps2 = t.repeat(2), eps.repeat(2, 1, 1)
    x_t = t2[:, None, None] * x1 + (1 - t2[:, None, None]) * eps2
    v = model(x_t, t2, emb2, cache.repeat(2))
    return ((v - (x1 - eps2)) ** 2).flatten(1).mean(1).view(2, -1)


def dpo_loss(policy: Policy, batch, loser: Tensor, t: Tensor, eps: Tensor, beta: float
             ) -> tuple[Tensor, dict[str, float]]:
    pair = torch.stack([batch.target, loser])
    err = flow_errors(policy.net, batch, pair, t, eps)
    with policy.reference() as ref:
        err_ref = flow_errors(ref, batch, pair, t, eps)
    gap = (err[0] - err_ref[0]) - (err[1] - err_ref[1])  # (B,) < 0: the winner fits better than the reference's
    loss = -F.logsigmoid(-beta * gap).mean()
    gap, err = gap.detach(), err.detach()
    return loss, {"dpo_accuracy": float((gap < 0).float().mean()), "dpo_gap": float(gap.mean()),
                  "winner_error": float(err[0].mean()), "loser_error": float(err[1].mean())}


class DPO:
    """The corpus windows and the loss of one update."""

    def __init__(self, data: str | Path, config: MotionConfig, beta: float, self_share: float = 0.0,
                 sampler: SamplerOptions = SamplerOptions()):
        from train.dataset import Corpus

        self.corpus = Corpus(data, "train", config)
        self.beta = beta
        self.self_share = self_share  # of each batch, the losers that are the policy's own samples
        self.sampler = sampler

    def loss(self, policy: Policy, rng: np.random.Generator, gen: torch.Generator, batch: int
             ) -> tuple[Tensor, dict[str, float]]:
        b = self.corpus.sample_batch(rng, batch)
        loser = corrupt(b.target, b.context, rng.integers(len(CORRUPTIONS), size=batch), rng)
        own = round(self.self_share * batch)
        if own:
            loser[:own] = self_samples(policy.net, b, self.sampler, gen)[:own]
        t = torch.rand(batch, generator=gen)
        eps = torch.randn(b.target.shape, generator=gen)
        return dpo_loss(policy, b, loser, t, eps, self.beta)
