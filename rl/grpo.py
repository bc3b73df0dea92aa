"""`avatar rl train --config rl.toml`: GRPO post-training of the motion generator (DESIGN.md §8), or the
reward-free objective (`--objective dpo`, rl.dpo).

A GRPO step (an epoch): each rank rolls out G samples of its share of the step's prompts (rl.rollout), the
composite reward (rl.rewards) scores them, the rewards of all ranks are gathered and turned into advantages
(group mean; group or batch std; clipped to +-adv_clip), then `minibatches` optimizer updates over the rank's
(prompt, chunk) records:

    loss = mean over trained steps and samples of  max(-A r, -A clip(r, 1 - eps, 1 + eps))  +  beta KL
    r = exp(log p_theta - log p_rollout)   (per SDE step; log-probs a mean over dims, rl.rollout)
    KL = ||mu_theta - mu_ref||^2 / (2 std^2)   (mean over dims; the frozen reference: adapters off under LoRA)

The first update of a step sees r == 1 exactly (the rollout's own numbers, replayed). Gradients are averaged
over ranks with all_reduce before each update (torchrun or accelerate launch: one process per rank, gloo on a
CPU, NCCL on GPUs; by hand rather than through DDP's wrapper because the network is called through
embed/forward/commit, not one forward), clipped and applied; the EMA follows. The held-out eval samples the val
split's prompts with the ODE the engine ships (fixed noise, EMA weights) and scores them with the same reward.

In --out: last.pt (resume: rerun the same command), log.jsonl, curves.png (a panel per reward term), and
rl.safetensors, the EMA weights with the adapters merged: an engine checkpoint (`avatar render --checkpoint`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from engine.backends.eager import chunk_step
from engine.errors import UserError
from engine.io.checkpoint import read_metadata, save_checkpoint
from engine.motion import spec
from engine.motion.cache import KVCache
from engine.motion.model import Conditions
from rl.configs import read_toml
from rl.policy import EMA, Policy
from rl.rewards import CompositeReward, RewardBreakdown, Sample
from rl.rollout import Prompt, Rollout, Rollouter, RolloutOptions, load_prompts, replay, with_pause

OBJECTIVES = ("grpo", "dpo", "draft")
STD_SCOPES = ("group", "batch")
# options that may change when a run is continued; everything else must match last.pt
RESUMABLE = ("steps", "eval_every", "save_every", "device", "threads")


@dataclass(frozen=True)
class TrainOptions:
    objective: str = "grpo"  # "grpo" (rewards), "dpo" (reward-free: rl.dpo) or "draft" (reward gradient: rl.draft)
    steps: int = 200  # GRPO: epochs of rollouts; DPO: optimizer updates
    prompts: int = 16  # prompts per GRPO step over all ranks (a multiple of the world size)
    pool: int = 64  # distinct training prompts drawn from the corpus once (the steps draw from it)
    min_seconds: float = 2.0  # each prompt a crop of a corpus clip this long, at least
    max_seconds: float = 4.0
    # draft: seconds of silence after each training crop (rl.rollout.with_pause). The crops are mostly speech, so
    # without it nothing asks the head to settle when the voice stops (the idle term's frames)
    pause_seconds: float = 0.0
    minibatches: int = 2  # optimizer updates per GRPO step (the ratio is 1 only in the first)
    lr: float = 3e-4
    clip_range: float = 1e-3  # PPO's eps, for log-probs averaged over dims
    beta: float = 0.01  # KL weight (0.004-0.04 in the anchors)
    adv_clip: float = 5.0  # advantages clipped to +-this
    std: str = "group"  # advantages divided by the group's std or the whole batch's
    lora_rank: int = 8  # 0: fine-tune every weight
    lora_alpha: float = 16.0
    ema: float = 0.95  # decay of the EMA weights that are evaluated and saved (0: none)
    grad_clip: float = 1.0
    dpo_beta: float = 500.0  # DPO's inverse temperature on the flow-matching error gap (rl.dpo)
    dpo_batch: int = 32  # windows per DPO update over all ranks
    dpo_self: float = 0.0  # share of the DPO losers that are the policy's own samples (the rest: corruptions)
    draft: dict = field(default_factory=dict)  # rl.draft.DraftWeights' fields (sway, jitter, ... anchor)
    # draft: the anchor's frozen reference samples with this audio guidance (rolled out without guidance, the
    # weights learn to make in one call what the guided reference makes in three); 0: the rollout's own sampler
    distil_guidance: float = 0.0
    eval_every: int = 10  # held-out eval every N steps (and at the end)
    eval_prompts: int = 8  # prompts of the corpus's val split (held-out voices)
    eval_samples: int = 2  # samples per eval prompt
    save_every: int = 5  # last.pt and rl.safetensors every N steps
    portrait: str = ""  # the face pixel terms render (""; the bundled portrait)
    render_size: int = 128
    seed: int = 0
    device: str = "cpu"
    threads: int = 0  # torch's intra-op threads per process (0: torch's default; 1 suits small models, many ranks)

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise UserError(f"objective must be one of {OBJECTIVES}; got {self.objective!r}")
        if self.std not in STD_SCOPES:
            raise UserError(f"std must be one of {STD_SCOPES}; got {self.std!r}")
        for name in ("steps", "prompts", "pool", "minibatches", "eval_every", "eval_prompts", "eval_samples",
                     "save_every", "dpo_batch"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.prompts > self.pool:
            raise UserError(f"prompts ({self.prompts}) cannot exceed the prompt pool ({self.pool})")
        if self.distil_guidance and (self.objective != "draft" or self.distil_guidance < 1):
            raise UserError(f"distil_guidance (the anchor's reference guidance) needs objective = \"draft\" and a "
                            f"scale >= 1 (0 = off); got {self.distil_guidance} with {self.objective!r}")
        if self.pause_seconds < 0 or (self.pause_seconds and self.objective != "draft"):
            raise UserError(f"pause_seconds (silence after each training crop) needs objective = \"draft\" and a "
                            f"length >= 0 (0 = none); got {self.pause_seconds} with {self.objective!r}")
        from rl.draft import DraftWeights

        try:
            object.__setattr__(self, "draft", dict(self.draft))
            DraftWeights(**self.draft)
        except TypeError as err:
            raise UserError(f"[train] draft takes the fields of rl.draft.DraftWeights: {err}") from err


@dataclass(frozen=True)
class RunConfig:
    """An rl.toml: top-level data/out/checkpoint, [train] (TrainOptions), [rollout] (RolloutOptions), [reward]
    (the composite's term tables, rl/configs/default.toml's format, or a path to such a file)."""

    data: str
    out: str
    checkpoint: str = ""  # the weights to post-train ("": the shipped generator)
    train: TrainOptions = field(default_factory=TrainOptions)
    rollout: RolloutOptions = field(default_factory=RolloutOptions)
    reward: dict = field(default_factory=dict)

    def identity(self) -> dict:
        """What a continued run must share with the saved one."""
        train = {k: v for k, v in asdict(self.train).items() if k not in RESUMABLE}
        return {"data": self.data, "checkpoint": self.checkpoint, "train": train,
                "rollout": asdict(self.rollout), "reward": self.reward}


def _options(cls, table: dict, where: str):
    allowed = {f.name for f in fields(cls)}
    if set(table) - allowed:
        raise UserError(f"{where} has unknown keys {sorted(set(table) - allowed)}; it takes {sorted(allowed)}")
    if "train_steps" in table:
        table = table | {"train_steps": tuple(table["train_steps"])}
    try:
        return cls(**table)
    except TypeError as err:
        raise UserError(f"{where}: {err}") from err


def load_config(path: str | Path, **overrides) -> RunConfig:
    """Read an rl.toml (see RunConfig); `overrides`: data, checkpoint, out, steps, objective from the command line
    (None: keep)."""
    path = Path(path)
    raw = read_toml(path, "RL config", "rl/configs/rl.toml")
    raw |= {k: overrides[k] for k in ("data", "checkpoint") if overrides.get(k) is not None}
    unknown = set(raw) - {"data", "out", "checkpoint", "train", "rollout", "reward"}
    if unknown or "data" not in raw:
        raise UserError(f"{path}: needs `data` (a corpus directory) and takes out, checkpoint, [train], [rollout], "
                        f"[reward]; got unknown keys {sorted(unknown)}")
    reward = raw.get("reward", {})
    if isinstance(reward, str):  # a reward config file, relative to the RL config
        reward_path = (path.parent / reward) if not Path(reward).is_absolute() else Path(reward)
        reward = read_toml(reward_path, f"{path}: reward config", "rl/configs/default.toml")
    train = _options(TrainOptions, dict(raw.get("train", {})), f"{path} [train]")
    train = replace(train, **{k: overrides[k] for k in ("steps", "objective") if overrides.get(k) is not None})
    out = overrides.get("out") or raw.get("out")
    if not out:
        raise UserError(f"{path}: no output directory; set `out` or pass --out")
    return RunConfig(str(raw["data"]), str(out), str(raw.get("checkpoint", "")), train,
                     _options(RolloutOptions, dict(raw.get("rollout", {})), f"{path} [rollout]"), reward)


def advantages(rewards: np.ndarray, std: str = "group", clip: float = 5.0, eps: float = 1e-6) -> np.ndarray:
    """(prompts, G) rewards -> advantages: minus the group's mean, over the group's (or the batch's) std, clipped.
    A group whose samples all score the same gets 0."""
    centred = rewards - rewards.mean(axis=1, keepdims=True)
    scale = rewards.std(axis=1, keepdims=True) if std == "group" else rewards.std()
    return np.clip(centred / (scale + eps), -clip, clip)


def ppo_kl_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mean: torch.Tensor,
                mean_ref: torch.Tensor, stds: Sequence[float], clip_range: float, beta: float
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate plus beta KL for one chunk: logp/old_logp (S, G) over its trained steps, adv (G,),
    means (S, G, L, D), stds (S,)."""
    ratio = torch.exp(logp - old_logp)
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_range, 1 + clip_range)).mean()
    var = torch.tensor(stds, dtype=mean.dtype, device=mean.device) ** 2
    kl = (((mean - mean_ref) ** 2).flatten(2).mean(-1) / (2 * var[:, None])).mean()
    dev = (ratio.detach() - 1).abs()
    stats = {"ratio_dev": float(dev.max()), "clipfrac": float((dev > clip_range).float().mean()),
             "kl": float(kl.detach())}
    return pg + beta * kl, stats


# ------------------------------------------------------------------------------------------------ ranks


def world(device: torch.device) -> tuple[int, int]:
    """(rank, world size); joins the process group torchrun or accelerate launch set up in the environment
    (gloo for CPU tensors, NCCL for CUDA ones)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def check_in_sync(tensors: Sequence[torch.Tensor]) -> None:
    """Raise if the ranks' copies of `tensors` differ (a fingerprint gathered from each): a run whose ranks drifted
    apart would silently train N different models."""
    if not dist.is_initialized():
        return
    fingerprint = torch.stack([t.detach().double().sum() for t in tensors]).cpu().numpy()
    every = gather_rows(fingerprint[None])
    if not np.all(every == every[0]):
        raise RuntimeError(f"ranks out of sync: weight fingerprints differ across ranks ({every.sum(1).tolist()})")


def gather_rows(x: np.ndarray) -> np.ndarray:
    """Every rank's (n, ...) rows, concatenated in rank order (each rank holds the same n)."""
    if not dist.is_initialized():
        return x
    t = torch.as_tensor(x, dtype=torch.float64)
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t)
    return torch.cat(parts).numpy()


def average_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """What DDP does after backward: every rank's gradients replaced by their mean."""
    if not dist.is_initialized():
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= dist.get_world_size()


def broadcast_parameters(params: Sequence[torch.nn.Parameter]) -> None:
    if dist.is_initialized():
        for p in params:
            dist.broadcast(p.data, 0)


# ------------------------------------------------------------------------------------------------ the run


class Trainer:
    """One rank's share of an RL run; rank 0 writes --out."""

    def __init__(self, config: RunConfig, log: Callable[[str], None] | None = None):
        from engine.motion.learned import load_generator

        self.config, opts = config, config.train
        self.device = torch.device(opts.device)
        if opts.threads:
            torch.set_num_threads(opts.threads)
        self.rank, self.world = world(self.device)
        self.out = Path(config.out)
        self.log = log or (lambda line: print(line, file=sys.stderr))
        if opts.prompts % self.world:
            raise UserError(f"prompts ({opts.prompts}) must be a multiple of the number of ranks ({self.world})")
        torch.manual_seed(opts.seed)  # the adapters' initialisation: the same on every rank
        model = load_generator(config.checkpoint or None).to(self.device)
        self.policy = Policy(model, opts.lora_rank, opts.lora_alpha)
        broadcast_parameters(self.policy.params)
        self.optimizer = torch.optim.AdamW(self.policy.params, lr=opts.lr, weight_decay=0.0)
        self.ema = EMA(self.policy, opts.ema) if opts.ema > 0 else None
        self.step = 0
        self.reward = (CompositeReward.from_dict(config.reward, "[reward]", self.log if self.rank == 0 else None)
                       if config.reward else None)
        if self.reward is None and opts.objective == "grpo":
            raise UserError("GRPO needs a reward: add a [reward] table (rl/configs/default.toml's terms) or a "
                            "`reward = \"path.toml\"` line, or train reward-free with --objective dpo")
        self.rollouter = Rollouter(self.policy.net, config.rollout)
        self._conditions: dict[int, list[Conditions]] = {}
        self._renderer = None
        self._sync = None  # the draft objective's lip-sync expert, loaded when its weight asks for it
        if opts.objective in ("grpo", "draft"):
            self.pool = load_prompts(config.data, "train", opts.pool, opts.min_seconds, opts.max_seconds, opts.seed)
            if opts.pause_seconds:
                self.pool = [with_pause(p, opts.pause_seconds) for p in self.pool]
        self.val = (load_prompts(config.data, "val", opts.eval_prompts, opts.min_seconds, opts.max_seconds,
                                 opts.seed + 1) if self.reward is not None and self.rank == 0 else [])
        self._val_conditions = [self.rollouter.conditions(p) for p in self.val]
        if opts.objective == "dpo":
            from rl.dpo import DPO

            if opts.dpo_batch % self.world:
                raise UserError(f"dpo_batch ({opts.dpo_batch}) must be a multiple of the ranks ({self.world})")
            if not 0 <= opts.dpo_self <= 1:
                raise UserError(f"dpo_self is a share of the batch, in [0, 1]; got {opts.dpo_self}")
            self.dpo = DPO(config.data, model.config, opts.dpo_beta, opts.dpo_self, config.rollout.sampler)

    # -- GRPO

    def step_prompts(self) -> list[tuple[int, torch.Generator]]:
        """This rank's share of the step's prompts (indices into the pool), each with its noise generator: the
        same draw on every rank and on resume."""
        opts = self.config.train
        chosen = np.random.default_rng([opts.seed, self.step]).choice(len(self.pool), size=opts.prompts,
                                                                      replace=False)
        return [(int(i), torch.Generator(device=self.device).manual_seed(
                    int(np.random.SeedSequence([opts.seed, self.step, int(i)]).generate_state(1)[0])))
                for i in chosen[self.rank :: self.world]]

    def conditions(self, i: int) -> list[Conditions]:
        if i not in self._conditions:
            self._conditions[i] = self.rollouter.conditions(self.pool[i])
        return self._conditions[i]

    def samples(self, prompt: Prompt, motion: np.ndarray) -> list[Sample]:
        """What the rewards score: each (T, D) motion of a prompt, rendered small where a term reads pixels."""
        if not self.reward.needs_frames:
            return [Sample(prompt.audio, prompt.features, m, transcript=prompt.transcript, target=prompt.target)
                    for m in motion]
        from train.eval_video import render

        portrait, renderer = self._portrait_renderer()
        return [Sample(prompt.audio, prompt.features, m, portrait, render(renderer, m), prompt.transcript,
                       target=prompt.target) for m in motion]

    def _portrait_renderer(self):
        if self._renderer is None:
            from engine import assets
            from engine.face.analysis import analyze_portrait
            from engine.face.rig import Rig
            from engine.render.renderer import Renderer

            self._portrait = analyze_portrait(self.config.train.portrait or assets.DEFAULT_PORTRAIT,
                                              size=self.config.train.render_size)
            self._renderer = Renderer(Rig(self._portrait)).eval()
        return self._portrait, self._renderer

    def grpo_step(self) -> dict:
        opts, ropts = self.config.train, self.config.rollout
        mine = self.step_prompts()
        rollouts: list[Rollout] = []
        breakdowns: list[RewardBreakdown] = []
        for i, gen in mine:
            rollout = self.rollouter.rollout(self.pool[i], gen, self.conditions(i))
            rollouts.append(rollout)
            breakdowns.append(self.reward(self.samples(rollout.prompt, rollout.motion)))
        rewards = gather_rows(np.stack([b.total for b in breakdowns]))  # (prompts, G), rank-major
        adv_all = advantages(rewards, opts.std, opts.adv_clip)
        n = len(mine)
        adv = torch.as_tensor(adv_all[self.rank * n : (self.rank + 1) * n], dtype=torch.float32, device=self.device)
        record = self._mean_summary(breakdowns)
        record["reward_std"] = float(rewards.std(axis=1).mean())

        units = [(j, c) for j, r in enumerate(rollouts) for c in range(len(r.chunks))]
        order = np.random.default_rng([opts.seed, self.step, self.rank, 1]).permutation(len(units))
        stats = []
        for mb, part in enumerate(np.array_split(order, opts.minibatches)):
            self.optimizer.zero_grad(set_to_none=True)
            for u in part:
                j, c = units[u]
                chunk = rollouts[j].chunks[c]
                logp, mean, stds = replay(self.policy.net, chunk, ropts)
                with self.policy.reference() as ref:
                    _, mean_ref, _ = replay(ref, chunk, ropts)
                loss, s = ppo_kl_loss(logp, chunk.log_probs, adv[j], mean, mean_ref, stds, opts.clip_range,
                                      opts.beta)
                (loss / len(part)).backward()
                stats.append(s | {"first": mb == 0, "loss": float(loss.detach())})
            self._apply()
        record |= {"loss": float(np.mean([s["loss"] for s in stats])),
                   "kl": float(np.mean([s["kl"] for s in stats])),
                   "clipfrac": float(np.mean([s["clipfrac"] for s in stats])),
                   "ratio_dev_first": max([s["ratio_dev"] for s in stats if s["first"]], default=0.0)}
        return record

    def _mean_summary(self, breakdowns: list[RewardBreakdown]) -> dict:
        """The batch's reward summary (RewardBreakdown.summary) averaged over every rank's prompts."""
        local = [b.summary() for b in breakdowns]
        keys = sorted(local[0])
        values = np.nanmean(np.array([[s[k] for k in keys] for s in local]), axis=0)
        if dist.is_initialized():
            values = gather_rows(values[None]).mean(0)
        return {k: float(v) for k, v in zip(keys, values)}

    def _apply(self) -> None:
        average_gradients(self.policy.params)
        torch.nn.utils.clip_grad_norm_(self.policy.params, self.config.train.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.policy, self.step)

    # -- DPO

    def dpo_step(self) -> dict:
        opts = self.config.train
        rng = np.random.default_rng([opts.seed, self.step, self.rank])
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        self.optimizer.zero_grad(set_to_none=True)
        loss, stats = self.dpo.loss(self.policy, rng, gen, opts.dpo_batch // self.world)
        loss.backward()
        self._apply()
        return {"loss": float(loss.detach())} | stats

    # -- DRaFT

    def draft_step(self) -> dict:
        from rl.draft import DraftWeights, SyncSimilarity, draft_loss

        opts, ropts = self.config.train, self.config.rollout
        weights = DraftWeights(**opts.draft)
        if weights.sync and self._sync is None:
            self._sync = SyncSimilarity()
        reference = (replace(ropts.sampler, guidance_audio=opts.distil_guidance) if opts.distil_guidance
                     else ropts.sampler)
        mine = self.step_prompts()
        self.optimizer.zero_grad(set_to_none=True)
        stats = []
        for i, gen in mine:
            loss, s = draft_loss(self.policy, self.pool[i], self.conditions(i), ropts.group, ropts.sampler,
                                 weights, gen, self._sync, reference)
            (loss / len(mine)).backward()
            stats.append(s | {"loss": float(loss.detach())})
        self._apply()
        return {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}

    # -- the loop

    def train_step(self) -> dict:
        step = {"grpo": self.grpo_step, "dpo": self.dpo_step, "draft": self.draft_step}[self.config.train.objective]
        record = step()
        self.step += 1
        check_in_sync(self.policy.params)
        return {"step": self.step, "ranks": self.world} | record

    def eval_model(self):
        return self.policy.export(self.ema.shadow if self.ema is not None else None)

    @torch.no_grad()
    def evaluate(self) -> dict:
        """The held-out reward of the EMA weights: the val prompts sampled as the engine samples (fixed noise)."""
        if not self.val:
            return {}
        model, opts = self.eval_model(), self.config.train
        sampler, cfg = self.config.rollout.sampler, model.config
        gen = torch.Generator(device=self.device).manual_seed(opts.seed + 10**6)
        breakdowns = []
        for prompt, conditions in zip(self.val, self._val_conditions):
            B = opts.eval_samples
            cache, clean = KVCache.empty(cfg, B, self.device), []
            for cond in conditions:
                noise = torch.randn(B, cfg.chunk, cfg.motion_dim, generator=gen, device=self.device)
                x, cache = chunk_step(model, sampler, Conditions(*(c.expand(B, *c.shape[1:]) for c in cond)),
                                      noise, cache)
                clean.append(x)
            motion = spec.clip(spec.denormalize(torch.cat(clean, 1).cpu().numpy()))[:, : len(prompt)]
            breakdowns.append(self.reward(self.samples(prompt, motion)))
        summary = {k: float(np.nanmean([b.summary()[k] for b in breakdowns])) for k in breakdowns[0].summary()}
        return {f"eval/{k}": v for k, v in summary.items()}

    def save(self, path: Path) -> None:
        from train.run import save_state

        save_state({"step": self.step, "trainable": self.policy.trainable_state(),
                    "ema": self.ema.shadow if self.ema is not None else None,
                    "optimizer": self.optimizer.state_dict(), "identity": self.config.identity()}, path)

    def load(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        saved, now = state["identity"], self.config.identity()
        if saved != now:
            diff = {k: (saved.get(k), now.get(k)) for k in set(saved) | set(now) if saved.get(k) != now.get(k)}
            raise UserError(f"{path} was written by a run with different settings {{name: (saved, now)}} {diff}; "
                            "rerun with the saved config to continue it, or pass a new --out")
        if state["step"] > self.config.train.steps:
            raise UserError(f"{path} is already at step {state['step']}, past steps = {self.config.train.steps}; "
                            "pass a larger --steps to continue")
        self.policy.load_trainable(state["trainable"])
        if self.ema is not None:
            self.ema.shadow = state["ema"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]

    def export(self, records: list[dict], command: str) -> Path:
        """rl.safetensors: the evaluated (EMA) weights, merged, with the base's provenance and the RL run's."""
        base = self.config.checkpoint or None
        if base is None:
            from engine import assets

            base = assets.DEFAULT_MOTION
        _, provenance = read_metadata(base)
        model = self.eval_model()
        curves = {k: [[r["step"], r[k]] for r in records if k in r]
                  for k in sorted({k for r in records for k in r
                                   if k.startswith(("reward", "eval/reward", "draft/")) or k == "loss"})}
        from engine.io import sha256_file

        sampler = {"guidance_audio": self.config.rollout.guidance_audio,  # what the weights were made to run with
                   "guidance_emotion": self.config.rollout.guidance_emotion}
        manifest = Path(self.config.data) / "manifest.json"  # which build of the corpus (piper's noise is unseeded)
        rl = {"command": command, "config": asdict(self.config), "steps": self.step,
              "base": str(base), "base_sha256": sha256_file(base), "curves": curves,
              "data_sha256": sha256_file(manifest) if manifest.is_file() else None}
        provenance = provenance | {"sampler": sampler, "rl": rl}
        return save_checkpoint(self.out / "rl.safetensors", model, model.config, **provenance)


def plot_curves(records: list[dict], path: Path) -> None:
    """A panel per reward term (train mean per step, held-out eval as markers), plus the KL or DPO loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in records for k in r if k.startswith("reward") and k != "reward_std"}
                  | {k.removeprefix("eval/") for r in records for k in r if k.startswith("eval/reward")})
    keys += [k for k in ("kl", "loss") if any(k in r for r in records)]
    if not keys:
        return
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        train = [(r["step"], r[key]) for r in records if key in r]
        held = [(r["step"], r[f"eval/{key}"]) for r in records if f"eval/{key}" in r]
        if train:
            ax.plot(*zip(*train), lw=0.8, label="train rollouts")
        if held:
            ax.plot(*zip(*held), "o-", label="held-out (EMA)")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def train(config: RunConfig, progress: bool = True, command: str = "") -> Path:
    """Run (or continue) the RL run `config` describes; rank 0 returns out/rl.safetensors."""
    from tqdm import tqdm

    from train.run import resume

    trainer = Trainer(config)
    out, opts = trainer.out, config.train
    if trainer.rank == 0:
        records = resume(trainer, out)
    else:
        if (out / "last.pt").exists():
            trainer.load(out / "last.pt")
        records = []
    if dist.is_initialized():
        dist.barrier()
    bar = tqdm(total=opts.steps, initial=trainer.step, disable=not progress or trainer.rank != 0,
               desc=f"rl {opts.objective}", unit="step")
    log = (out / "log.jsonl").open("a") if trainer.rank == 0 else None
    if trainer.rank == 0 and trainer.step == 0 and not records and trainer.val:  # where the held-out reward starts
        records.append({"step": 0} | trainer.evaluate())
        log.write(json.dumps(records[-1]) + "\n")
    while trainer.step < opts.steps:
        record = trainer.train_step()
        if trainer.rank == 0:
            if trainer.step % opts.eval_every == 0 or trainer.step == opts.steps:
                record |= trainer.evaluate()
            records.append(record)
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.set_postfix({k: f"{record[k]:.3f}" for k in ("reward", "eval/reward", "kl", "loss") if k in record})
            bar.update(1)
            if trainer.step % opts.save_every == 0 or trainer.step == opts.steps:
                trainer.save(out / "last.pt")
                trainer.export(records, command)
                plot_curves(records, out / "curves.png")
    bar.close()
    if log is not None:
        log.close()
    if trainer.rank == 0 and not (out / "rl.safetensors").exists():
        trainer.export(records, command)
    if dist.is_initialized():
        dist.barrier()
    return out / "rl.safetensors"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="avatar rl train",
        description="Post-train the motion generator: GRPO with the composite reward (rl/rewards), or reward-free "
                    "DPO with corpus targets as winners and corrupted targets as losers. Resumable: rerun the same "
                    "command. Several processes: torchrun --nproc-per-node N -m engine.cli rl train ...")
    parser.add_argument("--config", type=Path, required=True, help="the run's rl.toml (see rl/configs/rl.toml)")
    parser.add_argument("--data", type=Path, help="corpus directory (default: the config's `data`)")
    parser.add_argument("--checkpoint", type=Path, help="weights to post-train (default: the config's, else shipped)")
    parser.add_argument("--out", type=Path, help="output directory (default: the config's `out`)")
    parser.add_argument("--steps", type=int, help="train until this step (default: the config's)")
    parser.add_argument("--objective", choices=OBJECTIVES, help="grpo (rewards) or dpo (reward-free)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (the log still goes on)")
    args = parser.parse_args(argv)
    command = "avatar rl train " + shlex.join(list(argv if argv is not None else sys.argv[1:]))
    try:
        config = load_config(args.config, data=args.data and str(args.data), out=args.out and str(args.out),
                             checkpoint=args.checkpoint and str(args.checkpoint), steps=args.steps,
                             objective=args.objective)
        path = train(config, progress=not args.no_progress, command=command)
    except UserError as err:
        print(f"avatar rl train: error: {err}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if os.environ.get("RANK", "0") == "0":
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
