"""Pretraining the motion generator by flow matching on a synthetic corpus (DESIGN.md §6-7).

    python -m train.pretrain --data data/synth --out ckpt/ --steps 20000 --config default
    avatar train motion --data data/synth --out ckpt/

One step, for a batch of windows (train.dataset):
1. the clean context chunks are committed in ONE batched call (a committed chunk sees only itself,
   so (B, W, D) -> (B * W/L, L, D) gives exactly the keys/values the streaming generator would have
   cached) and laid out as a KVCache with the windows' validity flags and frame positions;
2. t ~ U(0, 1), eps ~ N(0, 1), x_t = t x1 + (1 - t) eps, target velocity u = x1 - eps;
3. loss = L1(v, u) + diff_weight * L1(frame-to-frame difference of v, of u), with the audio and the
   emotion of the target chunk each dropped with probability cfg_dropout (classifier-free guidance;
   the cache is always built with them on, as the generator builds it); gradients flow through the
   context commits unless context_grad is off;
4. AdamW, linear warmup then cosine decay over lr_decay_steps, gradient clipping, EMA of the weights.

Outputs in --out: last.pt (everything needed to resume, written atomically every save_every steps and
at the end; a rerun continues from it), motion.safetensors (the EMA weights, engine.io.checkpoint),
log.jsonl (step, loss, lr, val_loss) and loss.png.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from engine.errors import UserError
from engine.io import sha256_file
from engine.io.checkpoint import load_model, save_checkpoint
from engine.motion.baseline import EMOTIONS
from engine.motion.cache import KVCache
from engine.motion.model import NO_EMOTION, Conditions, MotionConfig, MotionTransformer
from train.dataset import Batch, Corpus
from train.run import add_run_arguments, load_state, resume, save_state, train_steps

CONFIGS = {
    "tiny": MotionConfig.tiny,
    "default": MotionConfig,  # L=4, K=2: the quality preset's window
    "fast": lambda: MotionConfig(chunk=2, lookahead=1),  # L=2, K=1: the low-latency and balanced presets' window
}
VAL_SEED = 12345  # the validation windows and their noise are the same in every run


@dataclass(frozen=True)
class PretrainOptions:
    steps: int = 20000  # train until this step; rerunning with a larger value continues the run
    batch: int = 32  # windows per step
    lr: float = 3e-4  # peak AdamW learning rate
    warmup: int = 500  # linear warmup steps
    lr_decay_steps: int | None = None  # cosine decay horizon (None: steps); fix it to extend a run later
    weight_decay: float = 0.01  # AdamW weight decay
    ema_decay: float = 0.999  # EMA of the weights (warmed up: min(decay, (1 + step) / (10 + step)))
    cfg_dropout: float = 0.1  # probability of dropping the audio, and separately the emotion, per window
    diff_weight: float = 0.5  # weight of the L1 loss on frame-to-frame velocity differences
    grad_clip: float = 1.0  # max global gradient norm
    context_grad: bool = True  # backpropagate through the context commits (False: ~2.4x faster on CPU)
    val_every: int = 500  # validate every this many steps (and at the end)
    val_batches: int = 4  # fixed validation batches of `batch` windows
    save_every: int = 500  # write last.pt every this many steps (and at the end)
    seed: int = 0  # model init, window sampling and noise
    config: str = "default"  # network: "tiny" (tests), "default" or "fast" (shipped; see CONFIGS)
    init: str | None = None  # warm start from these motion.safetensors weights (another L/K is adapted)

    def __post_init__(self):  # verified once, here
        for name in ("steps", "batch", "val_every", "val_batches", "save_every"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.warmup < 0 or (self.lr_decay_steps is not None and self.lr_decay_steps < 1):
            raise UserError(f"warmup must be >= 0 and lr_decay_steps >= 1; got {self.warmup}, {self.lr_decay_steps}")
        if not (0.0 <= self.cfg_dropout < 1.0 and 0.0 <= self.ema_decay < 1.0):
            raise UserError(f"cfg_dropout and ema_decay must be in [0, 1); got {self.cfg_dropout}, {self.ema_decay}")
        if self.lr_decay_steps is not None and self.steps > self.lr_decay_steps:
            raise UserError(f"steps ({self.steps}) past lr_decay_steps ({self.lr_decay_steps}) would train at "
                            "learning rate 0; raise lr_decay_steps (the cosine horizon) to at least steps")
        if self.config not in CONFIGS:
            raise UserError(f"config must be one of {', '.join(CONFIGS)}; got {self.config!r}")

    @property
    def decay_steps(self) -> int:
        return self.lr_decay_steps or self.steps

    def model_config(self) -> MotionConfig:
        return CONFIGS[self.config]()

    def run_identity(self) -> dict:
        """What a resumed run must share with the checkpoint: all that shapes the weights (the LR horizon
        resolved), not where it stops (`steps`) nor how often it validates or saves."""
        values = asdict(self)
        for bookkeeping in ("steps", "val_every", "save_every"):
            values.pop(bookkeeping)
        values["lr_decay_steps"] = self.decay_steps
        return values


# ------------------------------------------------------------------------------------------- the step


def context_cache(model: MotionTransformer, batch: Batch) -> KVCache:
    """Commit every clean context chunk in one call and lay the keys/values out as the cache."""
    cfg = model.config
    B, W, D = batch.context.shape
    L = cfg.chunk
    n = W // L
    ctx = batch.context.reshape(B * n, L, D)  # (B*n, L, D): chunk j of window b at row b*n + j
    cond = Conditions(
        speech=batch.context_speech.flatten(0, 1),  # (B*n, A, 2, 384)
        prosody=batch.context_prosody.flatten(0, 1),  # (B*n, A, 4)
        stats=batch.context_stats.flatten(0, 1),  # (B*n, 8)
        audio_on=torch.ones(B * n, dtype=torch.bool),
        emotion=batch.emotion.repeat_interleave(n),
        ref=batch.ref.repeat_interleave(n, dim=0),
    )
    pushed = model.commit(ctx, cond, KVCache.empty(cfg, B * n))

    def layout(z: Tensor) -> Tensor:
        z = z[:, :, :, -L:]  # (layers, B*n, h, L, hd): the chunk just pushed
        layers, _, h, _, hd = z.shape
        return z.reshape(layers, B, n, h, L, hd).permute(0, 1, 3, 2, 4, 5).reshape(layers, B, h, W, hd)

    pos = batch.start[:, None] - W + torch.arange(W)  # (B, W) absolute frame of each slot
    return KVCache(keys=layout(pushed.keys), values=layout(pushed.values), valid=batch.context_valid, pos=pos)


def flow_loss(model: MotionTransformer, batch: Batch, gen: torch.Generator, options: PretrainOptions,
              dropout: bool = True) -> Tensor:
    """Velocity L1 + diff_weight * L1 on its frame differences, for one batch (noise drawn from `gen`)."""
    x1 = batch.target  # (B, L, D)
    B = x1.shape[0]
    with torch.set_grad_enabled(torch.is_grad_enabled() and options.context_grad):
        cache = context_cache(model, batch)
    t = torch.rand(B, generator=gen)
    eps = torch.randn(x1.shape, generator=gen)
    x_t = t[:, None, None] * x1 + (1 - t[:, None, None]) * eps
    u = x1 - eps
    p = options.cfg_dropout if dropout else 0.0
    drop_audio = torch.rand(B, generator=gen) < p
    drop_emotion = torch.rand(B, generator=gen) < p
    cond = Conditions(speech=batch.speech, prosody=batch.prosody, stats=batch.stats, audio_on=~drop_audio,
                      emotion=torch.where(drop_emotion, NO_EMOTION, batch.emotion), ref=batch.ref)
    v = model(x_t, t, cond, cache)  # (B, L, D)
    return F.l1_loss(v, u) + options.diff_weight * F.l1_loss(v.diff(dim=1), u.diff(dim=1))


def lr_factor(step: int, options: PretrainOptions) -> float:
    """Multiplier of the peak LR at `step` (0-based): linear warmup, then cosine to 0 at decay_steps."""
    if step < options.warmup:
        return (step + 1) / options.warmup
    progress = min(1.0, (step - options.warmup) / max(1, options.decay_steps - options.warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def ema_update(ema: MotionTransformer, model: MotionTransformer, step: int, decay: float) -> None:
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - d)


@torch.no_grad()
def validate(model: MotionTransformer, batches: list[Batch], options: PretrainOptions) -> float:
    """Mean loss over the fixed validation windows, with fixed noise and no condition dropout."""
    gen = torch.Generator().manual_seed(VAL_SEED)
    return float(np.mean([flow_loss(model, b, gen, options, dropout=False).item() for b in batches]))


# -------------------------------------------------------------------------------------------- the run


def warm_start(model: MotionTransformer, path: str | Path) -> None:
    """Load trained weights into `model`, whose chunk L and lookahead K may differ from theirs.

    Only two kinds of tensor depend on L and K, and both are tables over time that can be cut:
    the audio encoders' window convolutions (taps: P past frames, the frame, K future) keep the
    taps both windows share, and the attention biases (per distance q - k) keep the distances both
    tables cover. Every other tensor must match exactly (same width, depth and heads)."""
    source, config, _ = load_model(path, MotionTransformer, MotionConfig)
    cfg = model.config
    if (config.audio_past, config.context) != (cfg.audio_past, cfg.context) or cfg.lookahead > config.lookahead \
            or cfg.chunk > config.chunk:
        raise UserError(f"--init {path}: can warm-start only to an equal or smaller chunk and lookahead with the "
                        f"same past and context; it has L={config.chunk} K={config.lookahead} P={config.audio_past} "
                        f"W={config.context}, this run L={cfg.chunk} K={cfg.lookahead} P={cfg.audio_past} "
                        f"W={cfg.context}")
    state, target = source.state_dict(), model.state_dict()
    for name, value in state.items():
        if name.endswith("window.weight"):  # (d, d, P + 1 + K): keep the first P + 1 + K' taps
            value = value[..., : cfg.audio_past + 1 + cfg.lookahead]
        elif name.endswith("rel_bias"):  # distances -(L-1) .. W+L-1 from index L-1: keep -(L'-1) .. W+L'-1
            start = config.chunk - cfg.chunk
            value = value[:, start: start + cfg.context + 2 * cfg.chunk - 1]
        if name not in target or value.shape != target[name].shape:
            raise UserError(f"--init {path}: tensor {name} {tuple(value.shape)} does not fit this network "
                            f"({tuple(target[name].shape) if name in target else 'absent'}); use a checkpoint "
                            "of the same width, depth and heads")
        target[name] = value
    model.load_state_dict(target)


class Run:
    """Model, EMA, optimizer, schedule, RNGs and the step count: everything last.pt holds."""

    def __init__(self, options: PretrainOptions):
        self.options = options
        self.config = options.model_config()
        with torch.random.fork_rng():  # seeded init without touching the caller's global RNG
            torch.manual_seed(options.seed)
            self.model = MotionTransformer(self.config).train()
            if options.init is not None:
                warm_start(self.model, options.init)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=options.lr,
                                           weight_decay=options.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, options))
        self.rng = np.random.default_rng(options.seed)  # window sampling
        self.gen = torch.Generator().manual_seed(options.seed)  # flow times, noise, dropout
        self.step = 0

    def train_step(self, corpus: Corpus) -> float:
        batch = corpus.sample_batch(self.rng, self.options.batch)
        loss = flow_loss(self.model, batch, self.gen, self.options)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.options.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        ema_update(self.ema, self.model, self.step, self.options.ema_decay)
        self.step += 1
        return loss.item()

    def state(self) -> dict:
        return {
            "model": self.model.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "step": self.step, "numpy_rng": self.rng.bit_generator.state, "torch_rng": self.gen.get_state(),
            "options": asdict(self.options), "config": self.config.to_dict(),
        }

    def save(self, path: Path) -> None:
        save_state(self.state(), path)

    def load(self, path: Path) -> None:
        state = load_state(path, self.options)
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.rng.bit_generator.state = state["numpy_rng"]
        self.gen.set_state(state["torch_rng"])
        self.step = state["step"]


def _plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], lw=0.8, label="train")
    val = [r for r in records if "val_loss" in r]
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="val (EMA)")
    ax.set_xlabel("step")
    ax.set_ylabel("flow loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pretrain(data: str | Path, out: str | Path, options: PretrainOptions, progress: bool = True) -> Path:
    """Train (or continue training) until options.steps; returns the path of motion.safetensors."""
    out = Path(out)
    run = Run(options)
    records = resume(run, out)

    train_set = Corpus(data, "train", run.config)
    val_set = Corpus(data, "val", run.config)
    val_batches = val_set.fixed_batches(VAL_SEED, options.val_batches, options.batch) if val_set.windows else []
    if not val_batches:
        print(f"warning: {data} has no validation clips; training without validation", file=sys.stderr)

    def postfix(record: dict) -> dict:
        shown = {"loss": f"{record['loss']:.4f}"}
        if "val_loss" in record:
            shown["val"] = f"{record['val_loss']:.4f}"
        return shown

    train_steps(run, options, out, records, step=lambda: run.train_step(train_set),
                validate=(lambda: {"val_loss": validate(run.ema, val_batches, options)}) if val_batches else None,
                postfix=postfix, desc="pretrain", progress=progress)

    manifest = Path(data) / "manifest.json"
    tail = records[-min(len(records), 50):]
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    weights = save_checkpoint(
        out / "motion.safetensors", run.ema, run.config,
        data=str(manifest), data_sha256=sha256_file(manifest), seed=options.seed, steps=run.step,
        train_loss=float(np.mean([r["loss"] for r in tail])) if tail else None,
        val_loss=vals[-1] if vals else None, options=asdict(options), emotions=list(EMOTIONS),
    )
    if records:
        _plot(records, out / "loss.png")
    return weights


# ------------------------------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> int:
    defaults = PretrainOptions()
    parser = argparse.ArgumentParser(
        prog="avatar train motion",
        description="Pretrain the motion generator (a flow-matching transformer, DESIGN.md §6) on a synthetic "
                    "corpus. Each step cuts windows from the corpus: a W-frame clean context (committed to the "
                    "KV cache), an L-frame target chunk and its audio; it learns the velocity that carries noise "
                    "to the target. Kill it at any time: rerunning the same command continues from last.pt.",
        epilog="Example: avatar data synth --out data/synth --hours 2 --seed 0 && "
               "avatar train motion --data data/synth --out ckpt --steps 20000. "
               "Writes ckpt/motion.safetensors (EMA weights; load with engine.io.checkpoint.load_model), "
               "ckpt/last.pt (resume state), ckpt/log.jsonl and ckpt/loss.png.",
    )
    add_run_arguments(parser, defaults, CONFIGS)
    parser.add_argument("--batch", type=int, default=defaults.batch, help=f"windows per step ({defaults.batch})")
    parser.add_argument("--no-context-grad", action="store_true",
                        help="do not backpropagate through the committed context (about 2.4x faster steps on CPU; "
                             "the cache's keys/values then learn only through each chunk's own attention)")
    parser.add_argument("--init", type=Path, default=None,
                        help="warm-start from trained weights (motion.safetensors); a smaller chunk or lookahead "
                             "than theirs is adapted, e.g. --config fast --init engine/assets/motion.safetensors")
    args = parser.parse_args(argv)
    options = PretrainOptions(
        steps=args.steps, batch=args.batch, lr=args.lr, warmup=args.warmup, lr_decay_steps=args.lr_decay_steps,
        val_every=args.val_every, save_every=args.save_every, seed=args.seed, config=args.config,
        context_grad=not args.no_context_grad, init=None if args.init is None else str(args.init),
    )
    try:
        path = pretrain(args.data, args.out, options, progress=not args.no_progress)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
