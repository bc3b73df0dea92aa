"""Rollouts: per-step log-probs are the Gaussian density, the records replay them exactly (CFG-free and guided,
with or without autograd), the conditions are the streaming generator's own, and noise enters only on the trained
steps."""

import math

import numpy as np
import pytest
import torch

from engine.errors import UserError
from rl.rollout import Rollouter, RolloutOptions, crop_prompt, gaussian_log_prob, replay


@pytest.fixture(scope="module")
def prompt():
    from engine import assets
    from engine.audio.io import load_audio

    audio = load_audio(assets.SAMPLE_SPEECH)
    return crop_prompt("sample", audio, "happy", None, start=10, frames=30)


def test_log_prob_is_the_gaussian_density_averaged_over_dims():
    torch.manual_seed(0)
    x, mean = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    expected = torch.distributions.Normal(mean, 0.3).log_prob(x).flatten(1).mean(1)
    assert torch.allclose(gaussian_log_prob(x, mean, 0.3), expected, atol=1e-6)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_replay_reproduces_the_rollouts_log_probs_exactly(tiny_model, prompt, guidance):
    options = RolloutOptions(group=3, steps=4, train_steps=(1, 2), guidance_audio=guidance)
    rollout = Rollouter(tiny_model, options).rollout(prompt, torch.Generator().manual_seed(0))
    assert rollout.motion.shape == (3, len(prompt), tiny_model.config.motion_dim)
    assert rollout.log_probs.shape == (3, math.ceil(len(prompt) / tiny_model.config.chunk), 2)
    assert not np.allclose(rollout.motion[0], rollout.motion[1])  # the group explores
    for chunk in rollout.chunks:
        with torch.no_grad():
            logp, _, _ = replay(tiny_model, chunk, options)
        assert torch.equal(logp, chunk.log_probs)
        logp, _, _ = replay(tiny_model, chunk, options)  # as the trainer computes them, with gradients
        assert logp.requires_grad and torch.equal(logp.detach(), chunk.log_probs)
    # the same noise stream gives the same rollout
    again = Rollouter(tiny_model, options).rollout(prompt, torch.Generator().manual_seed(0))
    assert np.array_equal(again.motion, rollout.motion)


def test_noise_only_on_trained_steps(tiny_model, prompt):
    """Untrained steps are the Euler ODE: each recorded x_{k+1} is x_k + u dt there; trained steps add noise."""
    from rl.rollout import embed, velocity

    options = RolloutOptions(group=2, steps=4, train_steps=(2,), noise_level=0.5)
    chunk = Rollouter(tiny_model, options).rollout(prompt, torch.Generator().manual_seed(1)).chunks[3]
    emb = embed(tiny_model, chunk.cond, 2, options.sampler)
    with torch.no_grad():
        for k in range(4):
            euler = chunk.xs[k] + velocity(tiny_model, chunk.xs[k], k / 4, emb, chunk.cache, options.sampler) / 4
            assert torch.allclose(chunk.xs[k + 1], euler, atol=1e-6) == (k != 2)


def test_conditions_and_chunks_are_the_streaming_generators(tiny_model, prompt):
    """Sampled with the engine's own chunk step and the same noise, the rollout's conditions give the motion
    StreamingGenerator.step gives: the context a rollout keeps is the one the engine builds."""
    from engine.audio.frontend import AudioFeatures
    from engine.backends.eager import TorchStep, chunk_step
    from engine.motion import spec
    from engine.motion.cache import KVCache
    from engine.motion.generator import StreamingGenerator, silence
    from engine.motion.sampler import SamplerOptions

    cfg, sampler = tiny_model.config, SamplerOptions(4, 2.0)
    conditions = Rollouter(tiny_model, RolloutOptions(group=2)).conditions(prompt)
    stream = StreamingGenerator(TorchStep(tiny_model, sampler))
    padded = AudioFeatures.concat([prompt.features, silence(-len(prompt) % cfg.chunk + cfg.lookahead)])
    cache, gen = KVCache.empty(cfg), torch.Generator().manual_seed(0)
    for j, cond in enumerate(conditions):
        noise = torch.randn(1, cfg.chunk, cfg.motion_dim, generator=gen)
        with torch.no_grad():
            clean, cache = chunk_step(tiny_model, sampler, cond, noise, cache)
        s = j * cfg.chunk
        expected = stream.step(padded[s : s + cfg.chunk + cfg.lookahead], "happy", noise=noise[0])
        assert np.allclose(spec.clip(spec.denormalize(clean[0].numpy())), expected, atol=1e-6)


def test_options_refuse_untrainable_steps():
    for steps in ((0, 1), (3,), (2, 1), ()):
        with pytest.raises(UserError, match="train_steps"):
            RolloutOptions(steps=4, train_steps=steps)
    with pytest.raises(UserError, match="group"):
        RolloutOptions(group=1)
    with pytest.raises(UserError, match="noise_level"):
        RolloutOptions(noise_level=0.0)


def test_corpus_prompts_carry_their_clips_target_motion(corpus_dir):
    from rl.rollout import load_prompts
    from train.synth.corpus import load_shard

    prompts = load_prompts(corpus_dir, "train", count=2, min_seconds=0.8, max_seconds=1.2, seed=3)
    clips = {}
    for p in prompts:
        shard, rest = p.name.split("#")
        index, start = map(int, rest.split("@"))
        clip = clips.setdefault(shard, load_shard(corpus_dir / shard))[index]
        assert p.target.shape == (len(p), clip["motion"].shape[1])
        np.testing.assert_array_equal(p.target, clip["motion"][start : start + len(p)])


def test_a_pause_appends_silence_the_vad_hears_and_no_target(corpus_dir):
    from rl.rollout import load_prompts, with_pause

    prompt = load_prompts(corpus_dir, "train", count=1, min_seconds=0.8, max_seconds=1.2, seed=3)[0]
    paused = with_pause(prompt, 1.0)
    assert len(paused) == len(prompt) + 25
    np.testing.assert_array_equal(paused.audio[: len(prompt.audio)], prompt.audio)
    assert paused.target is prompt.target  # the pause has no target: the statistics stay on the speech
    assert (np.asarray(paused.features.vad)[-20:] < 0.2).all()  # rl.rewards.base.SILENCE_VAD
