"""Direct reward fine-tuning: its sampler is the engine's (with gradients), its statistics are the reward's
(in torch), and a few steps on the tiny generator lower its loss."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter1d

from engine.motion.cache import KVCache
from engine.motion.model import Conditions
from engine.motion.sampler import SamplerOptions, integrate, sample
from rl.draft import DraftWeights, smooth, statistics_loss
from rl.grpo import Trainer, load_config


def test_smooth_is_scipys_gaussian_with_repeated_edges():
    x = np.random.default_rng(0).standard_normal((2, 40, 3)).astype(np.float32)
    np.testing.assert_allclose(smooth(torch.from_numpy(x), 2.0).numpy(),
                               gaussian_filter1d(x, 2.0, axis=1, mode="nearest", truncate=4.0), atol=1e-5)


@pytest.mark.parametrize("guidance", [1.0, 2.0], ids=["cfg-free", "guided"])
def test_the_differentiable_sampler_is_the_engines(tiny_model, guidance):
    """What draft_loss samples (rollout.embed, then engine.motion.sampler.integrate with autograd) equals the
    engine's no-grad `sample`, and carries gradients to the weights."""
    from engine import assets
    from engine.audio.io import load_audio
    from rl.rollout import Rollouter, RolloutOptions, crop_prompt, embed

    prompt = crop_prompt("sample", load_audio(assets.SAMPLE_SPEECH), "happy", None, start=10, frames=12)
    cond = Rollouter(tiny_model, RolloutOptions(group=2)).conditions(prompt)[0]
    cfg = tiny_model.config
    noise = torch.randn(2, cfg.chunk, cfg.motion_dim, generator=torch.Generator().manual_seed(0))
    options = SamplerOptions(4, guidance, 1.0)
    x = integrate(tiny_model, noise, embed(tiny_model, cond, 2, options), KVCache.empty(cfg, 2), options)
    assert x.requires_grad
    expected = sample(tiny_model, noise, Conditions(*(c.expand(2, *c.shape[1:]) for c in cond)),
                      KVCache.empty(cfg, 2), options)
    torch.testing.assert_close(x.detach(), expected)
    x.sum().backward()
    assert next(tiny_model.parameters()).grad is not None
    tiny_model.zero_grad(set_to_none=True)


def test_the_statistics_are_zero_on_the_target_and_grow_with_each_fault():
    from engine.motion import spec

    t = torch.arange(120, dtype=torch.float32)
    target = torch.from_numpy(np.tile(spec.neutral(), (120, 1)))
    target[:, spec.index("jawOpen")] = 0.3 * (1 + torch.sin(2 * np.pi * t / 9)) / 2  # syllables at ~2.8 Hz
    target[:, spec.index("headYaw")] += 0.03 * torch.sin(2 * np.pi * t / 60)
    _, same = statistics_loss(target[None], target, DraftWeights())
    closure = same.pop("draft/closure")  # the target's own opening where it counts as shut: below SHUT, not 0
    assert all(abs(v) < 1e-6 for v in same.values()), same
    assert 0 < closure < 0.05
    shaken = target.clone()
    shaken[:, spec.index("headYaw")] += 0.01 * (-1.0) ** t
    still = target.clone()
    still[:, spec.index("headYaw")] = target[:, spec.index("headYaw")].mean()
    _, faults = statistics_loss(torch.stack([shaken, still]), target, DraftWeights())
    assert faults["draft/jitter"] > 0.5 and faults["draft/sway"] > 0.1


def test_roughness_under_weighs_only_the_smoother_side():
    from engine.motion import spec

    t = torch.arange(120, dtype=torch.float32)
    target = torch.from_numpy(np.tile(spec.neutral(), (120, 1)))
    jaw = spec.index("jawOpen")
    target[:, jaw] = 0.15 * (1 + torch.sin(2 * np.pi * t / 9)) + 0.02 * (-1.0) ** t  # syllables with some pops
    popping, smooth = target.clone(), target.clone()
    popping[:, jaw] += 0.05 * (-1.0) ** t
    smooth[:, jaw] = 0.15 * (1 + torch.sin(2 * np.pi * t / 9))
    for under, smooth_counts in ((1.0, True), (0.0, False)):
        weights = DraftWeights(roughness_under=under)
        pops = statistics_loss(popping[None], target, weights)[1]["draft/roughness"]
        smoothed = statistics_loss(smooth[None], target, weights)[1]["draft/roughness"]
        assert pops > 0.3 and (smoothed > 0.3) == smooth_counts, (under, pops, smoothed)


def test_a_few_draft_steps_lower_the_loss(make_config):
    config = load_config(make_config(train={"objective": "draft", "steps": 6, "lr": 3e-3, "prompts": 2},
                                     reward={"target": {"weight": 1.0}}))
    trainer = Trainer(config)
    losses = [trainer.train_step()["loss"] for _ in range(6)]
    assert np.mean(losses[-2:]) < np.mean(losses[:2])


def test_distilling_the_guidance_pulls_one_unguided_call_toward_the_guided_reference(make_config):
    """With `distil_guidance` the anchor compares the unguided policy with the guided reference: it starts > 0 (the
    guidance changes the motion) and a few anchor-only steps shrink it; a bad setting is a clear error."""
    from engine.errors import UserError

    only_anchor = {"sway": 0.0, "jitter": 0.0, "roughness": 0.0, "tracking": 0.0, "closure": 0.0,
                   "articulation": 0.0, "anchor": 1.0}
    config = load_config(make_config(train={"objective": "draft", "steps": 10, "lr": 1e-2, "prompts": 2,
                                            "draft": only_anchor, "distil_guidance": 3.0},
                                     rollout={"guidance_audio": 1.0}, reward={"target": {"weight": 1.0}}))
    trainer = Trainer(config)
    gaps = [trainer.train_step()["draft/anchor"] for _ in range(10)]
    assert gaps[0] > 1e-4, gaps
    assert np.mean(gaps[-3:]) < 0.85 * np.mean(gaps[:3]), gaps
    with pytest.raises(UserError, match="distil_guidance"):
        load_config(make_config("bad", train={"objective": "grpo", "distil_guidance": 2.0}))


def test_the_sync_similarity_is_the_experts_and_rises_for_motion_in_sync():
    """The differentiable lag-0 similarity equals train.sync_expert's embeddings' and prefers the clip's own
    (baseline) mouth to the same mouth 8 frames late."""
    from engine import assets
    from engine.audio.frontend import extract_features
    from engine.audio.io import load_audio
    from engine.motion import spec
    from engine.motion.baseline import BaselineDriver
    from rl.draft import SyncSimilarity
    from rl.rollout import Prompt
    from train.sync_expert import audio_embeddings, motion_embeddings, shift_motion

    audio = load_audio(assets.SAMPLE_SPEECH)[: 4 * 16000]
    features = extract_features(audio)
    motion = BaselineDriver().drive(features)
    prompt = Prompt("clip", audio, features, "neutral")
    sync = SyncSimilarity()
    speech = torch.from_numpy(features.vad > 0.5)
    both = torch.from_numpy(spec.normalize(np.stack([motion, shift_motion(motion, 8)])))
    similarity = sync(prompt, both.requires_grad_(), speech)
    expected = (audio_embeddings(sync.expert, features) * motion_embeddings(sync.expert, motion)).sum(-1)
    assert float(similarity[0]) == pytest.approx(float(expected[speech.numpy()].mean()), abs=1e-5)
    assert similarity[0] > similarity[1] + 0.05
    similarity.sum().backward()
    assert both.grad.abs().sum() > 0


def test_the_anchor_weighs_the_head_as_asked():
    """anchor_head 1 is the plain mean over channels; 0 leaves the head's gap out (guidance's head is no model)."""
    from engine.motion import spec
    from rl.draft import _HEAD, _anchor_channels

    gap = torch.rand(2, 3, spec.D)
    torch.testing.assert_close((gap * _anchor_channels(1.0, spec.D)).sum(-1).mean(), gap.mean())
    only_head = torch.zeros_like(gap)
    only_head[..., _HEAD] = 1.0
    assert float((only_head * _anchor_channels(0.0, spec.D)).sum(-1).mean()) == 0.0


def test_articulation_is_zero_against_itself_and_sees_a_narrower_mouth():
    """The teacher term's measure: 0 for the reference's own motion, > 0 for the same motion at half the width."""
    from engine.motion import spec
    from rl.draft import articulation

    t = torch.arange(80, dtype=torch.float32)
    motion = torch.from_numpy(np.tile(spec.neutral(), (80, 1)))[None].clone()
    motion[0, :, spec.index("jawOpen")] = 0.2 * (1 + torch.sin(t / 3))
    narrow = motion.clone()
    narrow[0, :, spec.index("jawOpen")] *= 0.5
    assert float(articulation(motion, motion)) == 0.0
    assert float(articulation(narrow, motion)) > 0.15



def test_smoothed_articulation_does_not_count_pops_as_width():
    """A mouth at half the width plus frame-to-frame pops can match the reference's raw std; smoothed over a frame
    (articulation_sigma) its width is the syllable-rate motion's, still narrower."""
    from engine.motion import spec
    from rl.draft import articulation

    t = torch.arange(80, dtype=torch.float32)
    motion = torch.from_numpy(np.tile(spec.neutral(), (80, 1)))[None].clone()
    jaw = spec.index("jawOpen")
    motion[0, :, jaw] = 0.2 * (1 + torch.sin(t / 3))
    popping = motion.clone()
    popping[0, :, jaw] = 0.1 * (1 + torch.sin(t / 3)) + 0.1 + 0.11 * (-1) ** t  # half the width, pops every frame
    raw, smoothed = float(articulation(popping, motion)), float(articulation(popping, motion, sigma=1.0))
    assert raw < 0.05 and smoothed > 0.15, (raw, smoothed)  # 0.15: the half-width mouth's, as above
    assert float(articulation(motion, motion, sigma=1.0)) == 0.0

def test_idle_motion_counts_only_where_both_frames_are_silent_and_each_group_on_its_own():
    """The idle term's measure: rms frame-to-frame change over silent pairs of frames; a head that sways in speech
    and holds still in silence scores 0, one that keeps moving scores its step. Its excess over a reference is per
    group: lips shaping words in silence count in full beside a still head, and the engine's blinks not at all;
    `head` weighs the head's group against the other two."""
    from engine.motion import spec
    from rl.draft import IDLE_GROUPS, idle_excess, idle_motion

    rotation = [spec.index(n) for n in ("headYaw", "headPitch", "headRoll")]

    T = 20
    silent = torch.zeros(T, dtype=torch.bool)
    silent[10:] = True
    motion = torch.zeros(1, T, spec.D)
    motion[0, :10, spec.index("headYaw")] = torch.linspace(0, 0.3, 10)  # moves while speaking only
    assert float(idle_motion(motion, silent, rotation)) == 0.0
    moving = motion.clone()
    moving[0, 10:, spec.index("headYaw")] = 0.01 * torch.arange(10.0)  # keeps turning in silence
    assert float(idle_motion(moving, silent, rotation)) == pytest.approx(0.01 / 3 ** 0.5, rel=1e-4)

    reference = moving + 0.001 * torch.randn(moving.shape, generator=torch.Generator().manual_seed(0))
    assert float(idle_excess(reference, reference, silent)) == 0.0
    shaping = reference.clone()
    shaping[0, 10::2, spec.index("mouthFunnel")] += 0.05  # the lips pop in silence; the head as the reference's
    lips = float(torch.log((idle_motion(shaping, silent, IDLE_GROUPS["lips"]) + 1e-4)
                           / (idle_motion(reference, silent, IDLE_GROUPS["lips"]) + 1e-4)))
    assert float(idle_excess(shaping, reference, silent)) == pytest.approx(lips / 3, rel=1e-5) and lips > 1
    blinking = reference.clone()
    blinking[0, 10::2, spec.index("eyeBlink_L")] = 1.0
    assert float(idle_excess(blinking, reference, silent)) == 0.0

    turning = reference.clone()
    turning[0, 10::2, spec.index("headYaw")] += 0.05  # the head jerks in silence; the lips as the reference's
    head = float(torch.log((idle_motion(turning, silent, IDLE_GROUPS["head"]) + 1e-4)
                           / (idle_motion(reference, silent, IDLE_GROUPS["head"]) + 1e-4)))
    assert float(idle_excess(turning, reference, silent, head=0.25)) == pytest.approx(0.25 * head / 2.25, rel=1e-5)
    assert float(idle_excess(turning, reference, silent, head=0.0)) == 0.0  # idle_head = 0: lips and face only
    assert float(idle_excess(shaping, reference, silent, head=0.0)) == pytest.approx(lips / 2, rel=1e-5)


def test_the_idle_term_adds_its_weighted_value_where_the_crop_is_silent(make_config):
    """With `idle` set and a silent crop, the loss is the idle-free loss plus the weight times the logged term, and
    the term is > 0 once the policy's head moves more in silence than the frozen reference's."""
    import dataclasses

    from rl.draft import draft_loss

    config = load_config(make_config(train={"objective": "draft", "prompts": 1, "pool": 1}))
    trainer = Trainer(config)
    prompt = trainer.pool[0]
    features = dataclasses.replace(prompt.features, vad=np.zeros_like(prompt.features.vad))  # all silence
    silent = dataclasses.replace(prompt, features=features)
    with torch.no_grad():  # the policy's adapters off zero: its head now differs from the reference's
        for p in trainer.policy.net.parameters():
            if p.requires_grad:
                p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    ropts = config.rollout

    def loss(idle):
        return draft_loss(trainer.policy, silent, trainer.conditions(0), ropts.group, ropts.sampler,
                          DraftWeights(idle=idle), torch.Generator().manual_seed(3))

    (without, _), (with_idle, stats) = loss(0.0), loss(2.0)
    assert stats["draft/idle"] > 0
    torch.testing.assert_close(with_idle, without + 2.0 * stats["draft/idle"])


def test_a_paused_pool_gives_the_idle_term_its_silence_and_keeps_the_statistics_on_the_speech(make_config):
    """`pause_seconds` lengthens every training crop with silence: the idle term then has frames to measure even on
    crops that are all speech, while the target's statistics still see only the frames the target covers."""
    from rl.draft import draft_loss

    plain = Trainer(load_config(make_config("plain", train={"objective": "draft", "prompts": 1, "pool": 1})))
    config = load_config(make_config("paused", train={"objective": "draft", "prompts": 1, "pool": 1,
                                                      "pause_seconds": 1.0}))
    trainer = Trainer(config)
    prompt = trainer.pool[0]
    assert len(prompt) == len(plain.pool[0]) + 25 and len(prompt.target) == len(plain.pool[0])
    with torch.no_grad():  # the adapters off zero: the policy's head now moves more in silence than the reference's
        for p in trainer.policy.net.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    ropts = config.rollout

    def idle(prompt, conditions):
        return draft_loss(trainer.policy, prompt, conditions, ropts.group, ropts.sampler, DraftWeights(idle=1.0),
                          torch.Generator().manual_seed(3))

    loss, stats = idle(prompt, trainer.conditions(0))
    assert stats["draft/idle"] > 0 and torch.isfinite(loss)
    # the same speech without the pause: too few silent frames for the term
    assert idle(plain.pool[0], plain.rollouter.conditions(plain.pool[0]))[1]["draft/idle"] == 0
    loss.backward()
    trainer.train_step()  # a whole step runs on the paused pool


def test_the_idle_reference_runs_on_its_own_context(make_config, monkeypatch):
    """The idle term compares the policy with the frozen reference as the engine would run it, on its own context:
    two different policies meet the very same reference motion (on the policy's context it would continue the
    policy's motion, and move in silence as much as the policy does)."""
    import rl.draft
    from rl.draft import draft_loss

    config = load_config(make_config(train={"objective": "draft", "prompts": 1, "pool": 1, "pause_seconds": 1.0}))
    trainer = Trainer(config)
    seen = []
    real = rl.draft.idle_excess
    monkeypatch.setattr(rl.draft, "idle_excess",
                        lambda m, ref, *rest: seen.append((m.detach(), ref)) or real(m, ref, *rest))
    ropts = config.rollout
    for seed in (0, 1):
        with torch.no_grad():
            for p in trainer.policy.net.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)))
        draft_loss(trainer.policy, trainer.pool[0], trainer.conditions(0), ropts.group, ropts.sampler,
                   DraftWeights(idle=1.0), torch.Generator().manual_seed(3))
    (first, reference), (second, same) = seen
    assert not torch.allclose(first, second)
    torch.testing.assert_close(reference, same, rtol=0, atol=0)
