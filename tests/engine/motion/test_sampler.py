import math

import pytest
import torch
from torch import nn

from engine.motion.cache import KVCache
from engine.motion.model import NO_EMOTION, MotionConfig, MotionTransformer
from engine.motion.sampler import (
    SamplerOptions, guidance_batch, guided_velocity, sample, sde_log_prob, sde_mean_std, sde_step,
)
from tests.engine.motion.test_model import perturb_gates, random_conditions

CFG = MotionConfig.tiny()


@pytest.fixture
def model():
    torch.manual_seed(0)
    return perturb_gates(MotionTransformer(CFG)).eval()


def test_options_are_verified_once():
    for bad in ({"steps": 0}, {"steps": 2.5}, {"guidance_audio": -1.0}, {"guidance_emotion": math.nan}):
        with pytest.raises(ValueError):
            SamplerOptions(**bad)


@torch.no_grad()
def test_batched_guidance_equals_three_separate_calls(model):
    options = SamplerOptions(guidance_audio=2.5, guidance_emotion=1.7)
    x, t = torch.randn(2, CFG.chunk, CFG.motion_dim), torch.rand(2)
    cond, cache = random_conditions(2), KVCache.empty(CFG, 2)
    none = torch.full_like(cond.emotion, NO_EMOTION)
    v0 = model(x, t, cond._replace(audio_on=torch.zeros_like(cond.audio_on), emotion=none), cache)
    va = model(x, t, cond._replace(emotion=none), cache)
    vae = model(x, t, cond, cache)
    batched = guided_velocity(model, x, t, guidance_batch(cond), cache.repeat(3), options)
    assert torch.allclose(batched, v0 + 2.5 * (va - v0) + 1.7 * (vae - va), atol=1e-5)

    unguided = guided_velocity(model, x, t, guidance_batch(cond), cache.repeat(3), SamplerOptions(1, 0.0, 0.0))
    assert torch.allclose(unguided, v0, atol=1e-6)
    plain = guided_velocity(model, x, t, guidance_batch(cond), cache.repeat(3), SamplerOptions(1, 1.0, 1.0))
    assert torch.allclose(plain, vae, atol=1e-5)


@torch.no_grad()
def test_unguided_sampling_makes_one_plain_call_per_step(model):
    """Scales 1/1 skip the 3x guidance batch and give what the guided path gives."""
    calls = []
    model.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    noise, cond, cache = torch.randn(2, CFG.chunk, CFG.motion_dim), random_conditions(2), KVCache.empty(CFG, 2)
    plain = sample(model, noise, cond, cache, SamplerOptions(3))
    assert calls == [2, 2, 2]
    x = noise
    for i in range(3):  # the same Euler steps through the batched guidance path
        t = torch.full((2,), i / 3)
        x = x + guided_velocity(model, x, t, guidance_batch(cond), cache.repeat(3), SamplerOptions(3)) / 3
    assert torch.allclose(plain, x, atol=1e-5)


@torch.no_grad()
def test_guided_sampling_takes_the_embedded_guidance_batch(model):
    """The guidance batch embedded beforehand (as the chunk step does, to reuse it for the commit)
    samples what the raw conditions sample; an embedding of the plain batch is refused."""
    options = SamplerOptions(3, 2.0, 1.5)
    noise, cond, cache = torch.randn(2, CFG.chunk, CFG.motion_dim), random_conditions(2), KVCache.empty(CFG, 2)
    raw = sample(model, noise, cond, cache, options)
    assert torch.allclose(sample(model, noise, model.embed(guidance_batch(cond)), cache, options), raw, atol=1e-6)
    with pytest.raises(ValueError, match="guidance batch"):
        sample(model, noise, model.embed(cond), cache, options)


class ConstantVelocity(nn.Module):
    """A velocity field with a known ODE solution (the sampler's arithmetic, not a network's)."""

    def __init__(self, velocity):
        super().__init__()
        self.velocity = velocity

    def embed(self, cond):
        return cond

    def forward(self, x, t, cond, cache):
        return self.velocity.repeat(3, 1, 1)[: x.shape[0]]


@pytest.mark.parametrize("steps", [1, 3, 8])
def test_ode_with_constant_velocity_reaches_x0_plus_v(steps):
    torch.manual_seed(0)
    x0, v = torch.randn(1, CFG.chunk, CFG.motion_dim), torch.randn(1, CFG.chunk, CFG.motion_dim)
    out = sample(ConstantVelocity(v), x0, random_conditions(), KVCache.empty(CFG), SamplerOptions(steps, 3.0, 2.0))
    assert torch.allclose(out, x0 + v, atol=1e-6)


def test_sde_step_matches_flow_grpo_and_the_normal_density():
    """Our step in t (0 = noise) equals Flow-GRPO's in sigma = 1 - t with velocity -u, and its
    log-probability is the Normal density of the sample, summed over dimensions."""
    torch.manual_seed(0)
    x, u, noise = (torch.randn(3, CFG.chunk, CFG.motion_dim) for _ in range(3))
    t, t_next, a = 0.3, 0.55, 0.7
    x_next, logp = sde_step(x, u, t, t_next, noise, a)

    sigma, dsigma, v = 1 - t, -(t_next - t), -u
    s = a * math.sqrt(sigma / (1 - sigma))
    mean = x + (v + s**2 / (2 * sigma) * (x + (1 - sigma) * v)) * dsigma
    std = s * math.sqrt(abs(dsigma))
    assert torch.allclose(x_next, mean + std * noise, atol=1e-5)
    expected = torch.distributions.Normal(mean, std).log_prob(x_next).flatten(1).sum(1)
    assert logp.shape == (3,) and torch.isfinite(logp).all()
    assert torch.allclose(logp, expected, atol=1e-3)
    other = torch.randn_like(x)
    assert torch.allclose(sde_log_prob(x, u, t, t_next, other, a),
                          torch.distributions.Normal(mean, std).log_prob(other).flatten(1).sum(1), atol=1e-3)


def test_sde_step_with_noise_level_0_is_the_euler_step():
    torch.manual_seed(0)
    x, u = torch.randn(2, CFG.chunk, CFG.motion_dim), torch.randn(2, CFG.chunk, CFG.motion_dim)
    for t, t_next in ((0.0, 0.25), (0.5, 0.75)):  # from t = 0 too, where the SDE's noise scale diverges
        mean, std = sde_mean_std(x, u, t, t_next, 0.0)
        assert std == 0 and torch.equal(mean, x + u * (t_next - t))
    # and the SDE's mean tends to it as the noise level shrinks
    mean, _ = sde_mean_std(x, u, 0.5, 0.75, 1e-4)
    assert torch.allclose(mean, x + u * 0.25, atol=1e-6)


def test_sde_step_refuses_singular_times():
    x = torch.zeros(1, CFG.chunk, CFG.motion_dim)
    for t, t_next in ((0.0, 0.25), (0.5, 0.5), (0.8, 1.2)):
        with pytest.raises(ValueError, match="0 < t < t_next <= 1"):
            sde_mean_std(x, x, t, t_next, 0.7)
    with pytest.raises(ValueError, match="noise level"):
        sde_log_prob(x, x, 0.5, 0.75, x, 0.0)
    with pytest.raises(ValueError, match="noise level"):
        sde_mean_std(x, x, 0.5, 0.75, -0.1)
    _, std = sde_mean_std(x, x, 0.75, 1.0, 0.7)  # the last step still has noise
    assert std > 0
