"""Sampling the motion flow: Euler ODE steps with classifier-free guidance, and an SDE step for RL.

Time convention (ours, DESIGN.md §6 training): x_t = t x1 + (1 - t) eps with t from 0 (noise) to
1 (motion); the network predicts the velocity u = dx/dt = x1 - eps.

Flow-GRPO writes the same path with sigma = 1 - t running from 1 to 0 and velocity v = -u. Its
step x' = x + [v + (s^2 / 2 sigma)(x + (1 - sigma) v)] dsigma + s sqrt(|dsigma|) eps with
s = a sqrt(sigma / (1 - sigma)) becomes, with dsigma = -dt (dt = t_next - t > 0):

    x' = x + [u - (a^2 / 2t)(x - t u)] dt + a sqrt((1 - t) / t) sqrt(dt) eps

(x - t u is the model's estimate of the noise, so the extra drift is the score term). The step
is Gaussian: x' ~ N(mean, std^2) per dimension, which gives the log-probability for PPO ratios.
It needs 0 < t < t_next <= 1; an RL rollout starts its schedule just above 0 or takes the first
step with the ODE. Noise level a = 0 is that ODE: the Euler step (std 0, any 0 <= t < t_next), which has
no density.

Times are passed explicitly to every step; nothing here counts steps behind the caller's back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.motion.cache import KVCache
from engine.motion.model import NO_EMOTION, Conditions, Embedded, MotionTransformer


@dataclass(frozen=True)
class SamplerOptions:
    steps: int = 4  # Euler steps from noise (t = 0) to motion (t = 1)
    guidance_audio: float = 1.0  # ga: 0 ignores the audio, 1 plain conditional, > 1 exaggerates it
    guidance_emotion: float = 1.0  # ge: the same for the emotion, on top of the audio

    def __post_init__(self):  # verified once, here, so the loop never re-checks
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise ValueError(f"steps must be a positive integer (2-8 is typical); got {self.steps!r}")
        for name in ("guidance_audio", "guidance_emotion"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0 (1 = no guidance); got {value!r}")

    @property
    def guided(self) -> bool:
        """False when both scales are 1: the guided velocity is then the plain conditional one."""
        return self.guidance_audio != 1.0 or self.guidance_emotion != 1.0


def guidance_batch(cond: Conditions) -> Conditions:
    """B conditions -> 3B: (no audio, no emotion), (audio, no emotion), (audio, emotion)."""
    off = torch.zeros_like(cond.audio_on)
    none = torch.full_like(cond.emotion, NO_EMOTION)
    return Conditions(
        speech=cond.speech.repeat(3, 1, 1, 1),
        prosody=cond.prosody.repeat(3, 1, 1),
        stats=cond.stats.repeat(3, 1),
        audio_on=torch.cat([off, cond.audio_on, cond.audio_on]),
        emotion=torch.cat([none, none, cond.emotion]),
        ref=cond.ref.repeat(3, 1),
    )


def guided_velocity(model: MotionTransformer, x: Tensor, t: Tensor, cond3: Conditions | Embedded, cache3: KVCache,
                    options: SamplerOptions) -> Tensor:
    """One batched call on the 3 guidance copies (from guidance_batch / cache.repeat(3), raw or embedded)
    -> (B, L, D)."""
    v0, va, vae = model(x.repeat(3, 1, 1), t.repeat(3), cond3, cache3).chunk(3)  # each (B, L, D)
    return v0 + options.guidance_audio * (va - v0) + options.guidance_emotion * (vae - va)


@torch.no_grad()
def sample(model: MotionTransformer, noise: Tensor, cond: Conditions | Embedded, cache: KVCache,
           options: SamplerOptions) -> Tensor:
    """Euler ODE from noise (B, L, D) at t = 0 to the clean chunk (B, L, D) at t = 1.

    The conditions are encoded once per chunk, not once per step. Without guidance (both scales 1) each
    step is one plain conditional call on B rows, not 3B, and `cond` may come already embedded. Guided,
    `cond` is raw, or its guidance batch already embedded (model.embed(guidance_batch(cond)): 3B rows)."""
    if options.guided:
        if isinstance(cond, Embedded) and cond.static.shape[0] != 3 * noise.shape[0]:
            raise ValueError(f"guided sampling needs the raw Conditions or their embedded guidance batch "
                             f"(3 x {noise.shape[0]} rows); got {cond.static.shape[0]} embedded rows")
        emb = cond if isinstance(cond, Embedded) else model.embed(guidance_batch(cond))
    else:
        emb = cond if isinstance(cond, Embedded) else model.embed(cond)
    return integrate(model, noise, emb, cache, options)


def integrate(model: MotionTransformer, noise: Tensor, emb: Embedded, cache: KVCache, options: SamplerOptions
              ) -> Tensor:
    """`sample`'s Euler steps on conditions already embedded (guided: their guidance batch, 3B rows), with
    autograd where the caller has it on (training through the sampler: rl.draft)."""
    if options.guided:
        cache = cache.repeat(3)
    x, dt = noise, 1.0 / options.steps
    for i in range(options.steps):
        t = torch.full((x.shape[0],), i * dt, device=x.device)
        u = guided_velocity(model, x, t, emb, cache, options) if options.guided else model(x, t, emb, cache)
        x = x + u * dt
    return x


def sde_mean_std(x: Tensor, u: Tensor, t: float, t_next: float, a: float) -> tuple[Tensor, float]:
    """Mean (like x) and std (a number) of the Gaussian SDE transition from time t to t_next; a = 0 gives
    the Euler step's x + u dt with std 0."""
    if not a >= 0:
        raise ValueError(f"the noise level a must be >= 0 (0 is the ODE's Euler step); got {a}")
    dt = t_next - t
    if a == 0 and 0.0 <= t < t_next <= 1.0:
        return x + u * dt, 0.0
    if not 0.0 < t < t_next <= 1.0:
        raise ValueError(f"the SDE step needs 0 < t < t_next <= 1; got t={t}, t_next={t_next}")
    mean = x + (u - (a * a / (2.0 * t)) * (x - t * u)) * dt
    return mean, a * math.sqrt((1.0 - t) / t * dt)


def sde_log_prob(x: Tensor, u: Tensor, t: float, t_next: float, x_next: Tensor, a: float) -> Tensor:
    """Log-density (B,) of x_next under the step from x (B, ...) with velocity u, summed over dims."""
    if not a > 0:
        raise ValueError(f"the noise level a must be > 0 for a log-probability (a = 0 is deterministic); got {a}")
    mean, std = sde_mean_std(x, u, t, t_next, a)
    logp = -((x_next - mean) ** 2) / (2 * std * std) - math.log(std) - 0.5 * math.log(2 * math.pi)
    return logp.flatten(1).sum(1)


def sde_step(x: Tensor, u: Tensor, t: float, t_next: float, noise: Tensor, a: float = 0.7) -> tuple[Tensor, Tensor]:
    """One stochastic step: (x_next, its log-probability (B,)) given standard normal noise like x (a > 0;
    the Euler step is sde_mean_std with a = 0)."""
    mean, std = sde_mean_std(x, u, t, t_next, a)
    x_next = mean + std * noise
    return x_next, sde_log_prob(x, u, t, t_next, x_next, a)
