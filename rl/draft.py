"""`avatar rl train --objective draft`: direct reward fine-tuning (DRaFT / ReFL / AlignProp's idea) of the motion
generator, the differentiable part of the target-statistics reward (rl.rewards.target) backpropagated through the
engine's own sampler.

Why not only GRPO here: on this generator the head's motion is mostly noise that leaks through the flow (its jitter
is ~30 % of its std against ~4 % in the corpus), and every LoRA update (GRPO, DPO and plain flow-matching alike, at
lr 5e-4..2e-3) raised that leak within 25-100 updates, while GRPO's per-sample signal over 46 x 4 dimensions per
chunk was too weak to push back (benchmarks/results/rl_posttrain.md). A reward gradient is dense: it says which way
every frame should move.

A step samples `prompts` corpus crops x `group` noises chunk by chunk exactly as the engine does (the configured
sampler: Euler steps, guidance; the clamp; the commit), with gradients through each chunk's sampling steps and the
cache committed without them (each chunk learns to continue the context it was given), then minimises

    loss = sway (log std ratio of the smoothed head, squared) + jitter (head jitter's excess over the target's)
           + roughness (|log ratio| of the mouth opening's; its smoother side x roughness_under)
           + tracking (1 - r of the opening with the target's)
           + closure (the opening where the target's lips are shut in speech)
           + articulation (|log std ratio| of the opening, funnel and pucker)
           - sync (the lip-sync expert's audio . mouth embedding similarity at lag 0 over speech frames)
           + idle (the face's and head's frame-to-frame motion in silence, relu of log ratios to the frozen
                   reference's)
           + anchor * mean ||clean - clean_ref||^2   (the frozen reference's chunk from the same noise and cache)
    each term weighted (DraftWeights, [train] draft = {...} in the config)

The reference may sample with audio guidance while the policy samples without (`[train] distil_guidance`): the
anchor then pulls one unguided call toward what the guided 3-row call made (guidance distillation, as Flow-GRPO's
CFG-free rollouts do implicitly), while the terms above keep pushing on the motion itself.

per sample against its clip's own target (rl.rewards.target's statistics, in torch). The anchor plays KL's part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from engine.motion import spec
from engine.motion.cache import KVCache
from engine.motion.model import Conditions, Embedded
from engine.motion.sampler import SamplerOptions, integrate
from rl.policy import Policy
from rl.rewards.base import SILENCE_VAD, SPEECH_VAD
from rl.rewards.target import ARTICULATION, JITTER_FLOOR, SHUT, SWAY_SIGMA
from rl.rewards.temporal import HEAD_ROTATION, JITTER_SIGMA
from rl.rollout import Prompt, embed

_HEAD = [spec.index(n) for n in HEAD_ROTATION]
_JAW, _CLOSE = spec.index("jawOpen"), spec.index("mouthClose")
_ARTIC = [spec.index(n) for n in ARTICULATION]
IDLE_MIN_STEPS = 5  # fewer silent frame pairs than this in a crop: no idle term for it
# The idle term's channel groups, each its own ratio so the head's large channels cannot hide the lips': the head
# (rotation, translation, scale), the lips and jaw, and the rest of the face less the blinks (the engine draws those).
# The live runs' lips shaped words in silence (funnel, pucker, press: 3-5x their base's motion a frame) and their
# head slid (translation 2x) while its rotation stayed nearly as still as the base's.
_BLINKS = {spec.index("eyeBlink_L"), spec.index("eyeBlink_R")}
IDLE_GROUPS = {
    "head": [i for i, c in enumerate(spec.COEFFS) if c.group == "head"],
    "lips": [i for i, c in enumerate(spec.COEFFS) if c.group in ("jaw", "mouth")],
    "face": [i for i, c in enumerate(spec.COEFFS)
             if c.group in ("eyes", "brows", "cheeks", "nose") and i not in _BLINKS],
}
_MID = torch.from_numpy((spec.LOW + spec.HIGH) / 2)
_HALF = torch.from_numpy((spec.HIGH - spec.LOW) / 2)


@dataclass(frozen=True)
class DraftWeights:
    sway: float = 1.0
    jitter: float = 1.0
    roughness: float = 1.0
    tracking: float = 1.0
    closure: float = 2.0
    articulation: float = 0.5
    sync: float = 0.0  # the lip-sync expert's similarity of audio and mouth at lag 0 (train.sync_expert), raised
    anchor: float = 1.0
    # the anchor's weight on the head's channels relative to the rest: guidance amplifies the head's noise leak,
    # so a guided reference's head is no model to distil (0: the sway and jitter terms alone shape the head)
    anchor_head: float = 1.0
    # |log std ratio| of the opening, funnel and pucker over the clip against the frozen reference's clip from the same
    # noise: the teacher's dynamics (with distil_guidance, the guided mouth's width) rather than its chunks
    teacher_articulation: float = 0.0
    # frames of Gaussian smoothing of the lips before both articulation terms take their std (0: none): the width
    # of the syllable-rate motion, so a term asking for a wider mouth cannot be met by frame-to-frame pops
    articulation_sigma: float = 0.0
    # relu(log ratio) of the frame-to-frame motion in silent frames (VAD below SILENCE_VAD) over that of the frozen
    # reference run on its own from the same noises, per IDLE_GROUPS group, averaged: the statistics terms span the
    # whole crop, so alone they let the face keep moving once speech stops; the crops hold little silence, so pair
    # it with [train] pause_seconds
    idle: float = 0.0
    # the head group's weight in the idle term relative to the lips' and the face's (0: lips and face only). At idle
    # x8 the head swayed less in long speech too; taking the head out (runs f23, f24) did not bring its sway back
    idle_head: float = 1.0
    # the roughness term's weight where the mouth is smoother than the target's, relative to where it is rougher
    # (1: |log ratio|; 0: only pops count). Runs f20 and f28 smoothed the dev set's short prompts but roughened the
    # held-out set's connected speech, where the base was already as smooth as the speech
    roughness_under: float = 1.0


def _anchor_channels(head: float, dims: int) -> Tensor:
    """(dims,) weights that average the anchor's squared gap over channels, the head's counted `head` times."""
    w = torch.ones(dims)
    w[_HEAD] = head
    return w / dims


def smooth(x: Tensor, sigma: float) -> Tensor:
    """(B, T, C) Gaussian-smoothed along T (edges repeated), as scipy's gaussian_filter1d(mode="nearest")."""
    radius = int(4 * sigma + 0.5)
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=x.dtype) / sigma) ** 2)
    k = (k / k.sum()).view(1, 1, -1)
    B, T, C = x.shape
    y = F.pad(x.permute(0, 2, 1).reshape(B * C, 1, T), (radius, radius), mode="replicate")
    return F.conv1d(y, k).view(B, C, T).permute(0, 2, 1)


def articulation(motion: Tensor, reference: Tensor, std_floor: float = 2e-3, sigma: float = 0.0) -> Tensor:
    """(B, T, D) raw motion against (1 or B, T, D) raw reference -> (B,) mean |log std ratio| over time of the lips'
    opening, funnel and pucker (each smoothed over `sigma` frames first, where given)."""
    def lips(x: Tensor) -> Tensor:
        x = torch.cat([(x[..., _JAW] - x[..., _CLOSE]).clamp(min=0)[..., None], x[..., _ARTIC]], -1)
        return smooth(x, sigma) if sigma > 0 else x

    return torch.log((lips(motion).std(1) + std_floor) / (lips(reference).std(1) + std_floor)).abs().mean(-1)


def idle_motion(motion: Tensor, silent: Tensor, channels: list[int]) -> Tensor:
    """(B, T, D) raw motion, (T,) bool silent frames -> (B,) rms frame-to-frame change of `channels` over the steps
    between two silent frames."""
    steps = silent[1:] & silent[:-1]
    return motion[:, :, channels].diff(dim=1)[:, steps].pow(2).mean((1, 2)).sqrt()


def idle_excess(motion: Tensor, reference: Tensor, silent: Tensor, head: float = 1.0) -> Tensor:
    """(B,) mean over IDLE_GROUPS of relu(log ratio) of `motion`'s idle motion over `reference`'s (both (B, T, D)),
    the head group's counted `head` times."""
    weights = torch.tensor([head if name == "head" else 1.0 for name in IDLE_GROUPS])
    excess = torch.stack([F.relu(torch.log((idle_motion(motion, silent, g) + 1e-4)
                                           / (idle_motion(reference, silent, g) + 1e-4)))
                          for g in IDLE_GROUPS.values()])
    return (weights[:, None] * excess).sum(0) / weights.sum()


def statistics_loss(motion: Tensor, target: Tensor, weights: DraftWeights, speech: Tensor | None = None,
                    std_floor: float = 2e-3) -> tuple[Tensor, dict[str, float]]:
    """(B, T, D) raw motion against one (T, D) raw target -> the mean loss over B and its parts; `speech` (T,)
    bool marks the frames where a shut target mouth is a closure (default: all)."""
    head, head_t = motion[..., _HEAD], target[None, :, _HEAD]
    sway = torch.log((smooth(head, SWAY_SIGMA).std(1) + std_floor)
                     / (smooth(head_t, SWAY_SIGMA).std(1) + std_floor)).pow(2).mean(-1)
    jit = (head - smooth(head, JITTER_SIGMA)).pow(2).mean((1, 2)).sqrt()
    jit_t = max(float((head_t - smooth(head_t, JITTER_SIGMA)).pow(2).mean().sqrt()), JITTER_FLOOR)
    jitter = F.relu(torch.log(jit / jit_t))
    opening = (motion[..., _JAW] - motion[..., _CLOSE]).clamp(min=0)
    opening_t = (target[:, _JAW] - target[:, _CLOSE]).clamp(min=0)[None]

    def rough(x: Tensor) -> Tensor:
        return x.diff(n=2, dim=1).std(1) / (x.std(1) + 1e-6)

    # a target whose mouth barely moves has no roughness to match (rl.rewards.target skips it too)
    excess = torch.log((rough(opening) + 1e-3) / (rough(opening_t) + 1e-3))
    roughness = (F.relu(excess) + weights.roughness_under * F.relu(-excess)
                 if float(opening_t.std()) > std_floor else opening.new_zeros(opening.shape[0]))
    a, b = opening - opening.mean(1, keepdim=True), opening_t - opening_t.mean(1, keepdim=True)
    r = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-6)
    shut = (opening_t[0] < SHUT) & (speech if speech is not None else torch.ones_like(opening_t[0], dtype=torch.bool))
    closure = opening[:, shut].mean(1) if int(shut.sum()) >= 2 else opening.new_zeros(opening.shape[0])
    parts = {"sway": sway, "jitter": jitter, "roughness": roughness, "tracking": 1 - r, "closure": closure,
             "articulation": articulation(motion, target[None], std_floor, weights.articulation_sigma)}
    loss = sum(getattr(weights, k) * v for k, v in parts.items()).mean()
    return loss, {f"draft/{k}": float(v.detach().mean()) for k, v in parts.items()}


class SyncSimilarity:
    """The lip-sync expert's lag-0 similarity of a prompt's audio with (B, T, D) normalized motion, differentiable
    in the motion (the audio's embeddings are computed once per prompt)."""

    def __init__(self, path: str = ""):
        from engine.assets import ASSETS_DIR
        from train.sync_expert import MOUTH, load_expert

        self.expert = load_expert(path or ASSETS_DIR / "sync_expert.safetensors").requires_grad_(False)
        self.mouth = [spec.index(n) for n in MOUTH]  # the expert's motion input (train.sync_expert.mouth_track)
        self._audio: dict[str, Tensor] = {}

    def __call__(self, prompt: Prompt, normalized: Tensor, speech: Tensor) -> Tensor:
        from train.sync_expert import audio_embeddings

        if prompt.name not in self._audio:
            self._audio[prompt.name] = torch.from_numpy(audio_embeddings(self.expert, prompt.features))
        c = self.expert.config
        mouth = normalized[..., self.mouth]  # (B, T, mouth)
        padded = torch.cat([mouth[:, :1].expand(-1, c.half, -1), mouth, mouth[:, -1:].expand(-1, c.half, -1)], 1)
        windows = padded.unfold(1, c.window, 1).transpose(2, 3)  # (B, T, window, mouth)
        B, T = windows.shape[:2]
        emb = self.expert.embed_motion(windows.flatten(0, 1)).view(B, T, -1)
        similarity = (emb * self._audio[prompt.name][None]).sum(-1)  # (B, T)
        if int(speech.sum()) == 0:
            return similarity.new_zeros(B)
        return similarity[:, speech].mean(1)


def draft_loss(policy: Policy, prompt: Prompt, conditions: list[Conditions], group: int, sampler: SamplerOptions,
               weights: DraftWeights, gen: torch.Generator, sync: SyncSimilarity | None = None,
               reference: SamplerOptions | None = None) -> tuple[Tensor, dict[str, float]]:
    """The loss of `group` samples of one prompt (with gradients through every chunk's sampling). `reference`: the
    frozen reference's sampler for the anchor (default `sampler`); guided while `sampler` is not, the anchor distils
    the guidance into the weights."""
    reference = reference or sampler
    model, cfg = policy.net, policy.net.config
    cache = KVCache.empty(cfg, group)
    # the idle term's reference runs on its own context, as the engine runs it: on the policy's (the anchor's), it
    # continues whatever motion the policy has been making and moves in silence as much as the policy does
    own = KVCache.empty(cfg, group) if weights.idle else None
    clean, anchor, teacher, alone = [], [], [], []
    for cond in conditions:  # each chunk sampled as engine.backends.eager.chunk_step samples it, with autograd
        noise = torch.randn(group, cfg.chunk, cfg.motion_dim, generator=gen)
        emb = embed(model, cond, group, sampler)
        x = integrate(model, noise, emb, cache, sampler).clamp(-1.0, 1.0)
        with policy.reference() as ref:
            ref_emb = embed(ref, cond, group, reference)
            x_ref = integrate(ref, noise, ref_emb, cache, reference).clamp(-1.0, 1.0)
            if own is not None:
                x_own = integrate(ref, noise, ref_emb, own, reference).clamp(-1.0, 1.0)
                own = ref.commit(x_own, Embedded(*(e[-group:] for e in ref_emb)) if reference.guided else ref_emb,
                                 own)
                alone.append(x_own)
        if weights.teacher_articulation:
            teacher.append(x_ref.detach())
        gap = (x - x_ref).pow(2)
        anchor.append((gap * _anchor_channels(weights.anchor_head, gap.shape[-1])).sum(-1).mean())
        with torch.no_grad():  # the commit takes the guidance batch's last (fully conditioned) copy
            cache = model.commit(x.detach(), Embedded(*(e[-group:] for e in emb)) if sampler.guided else emb,
                                 cache)
        clean.append(x)
    T = len(prompt)
    normalized = torch.cat(clean, 1)[:, :T]
    motion = normalized * _HALF + _MID
    speech = torch.from_numpy(np.asarray(prompt.features.vad) > SPEECH_VAD)
    # the statistics cover the frames the target covers (not a pause appended after it: rl.rollout.with_pause)
    n = len(prompt.target)
    loss, stats = statistics_loss(motion[:, :n], torch.from_numpy(np.asarray(prompt.target, np.float32)), weights,
                                  speech[:n])
    if sync is not None and weights.sync:
        similarity = sync(prompt, normalized, speech)
        loss = loss - weights.sync * similarity.mean()
        stats["draft/sync"] = float(similarity.detach().mean())
    teacher_motion = torch.cat(teacher, 1)[:, :T] * _HALF + _MID if teacher else None
    if weights.teacher_articulation:
        taught = articulation(motion, teacher_motion, sigma=weights.articulation_sigma)
        loss = loss + weights.teacher_articulation * taught.mean()
        stats["draft/teacher_articulation"] = float(taught.detach().mean())
    if weights.idle:
        silent = torch.from_numpy(np.asarray(prompt.features.vad) < SILENCE_VAD)
        idle = motion.new_zeros(())
        if int((silent[1:] & silent[:-1]).sum()) >= IDLE_MIN_STEPS:
            idle = idle_excess(motion, torch.cat(alone, 1)[:, :T] * _HALF + _MID, silent, weights.idle_head).mean()
        loss = loss + weights.idle * idle
        stats["draft/idle"] = float(idle.detach())
    anchor_loss = torch.stack(anchor).mean()
    stats["draft/anchor"] = float(anchor_loss.detach())
    return loss + weights.anchor * anchor_loss, stats
