"""The GRPO trainer: advantage maths, the clipped surrogate and KL, ratio 1 before any update, a run that writes an
engine checkpoint, resuming, LoRA merged on export, and the reward-free DPO objective."""

import json
import math

import numpy as np
import pytest
import torch

from engine.errors import UserError
from rl.grpo import Trainer, advantages, load_config, ppo_kl_loss, train


def test_advantages_are_group_normalised_and_clipped():
    rewards = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 0.0, 100.0]])
    adv = advantages(rewards, "group", clip=5.0)
    assert np.allclose(adv[0].mean(), 0) and np.isclose(adv[0].std(), 1.0, atol=1e-5)
    assert np.allclose(adv[0], (rewards[0] - 2.5) / rewards[0].std(), atol=1e-5)
    assert np.all(adv[1] == 0)  # a tied group teaches nothing
    assert np.allclose(adv[2], [-1 / math.sqrt(3)] * 3 + [math.sqrt(3)], atol=1e-4)
    batch = advantages(rewards, "batch", clip=1.0)  # one std for the whole batch, then the clip
    assert np.allclose(batch, np.clip((rewards - rewards.mean(1, keepdims=True)) / rewards.std(), -1, 1), atol=1e-5)
    assert batch.max() == pytest.approx(1.0, abs=1e-6) and batch.min() >= -1.0


def test_ppo_clip_and_kl():
    torch.manual_seed(0)
    S, G = 2, 3
    old = torch.randn(S, G)
    mean = torch.randn(S, G, 4, 5)
    adv = torch.tensor([1.0, -1.0, 0.5])
    logp = old.clone().requires_grad_(True)
    loss, stats = ppo_kl_loss(logp, old, adv, mean, mean.clone(), [0.3, 0.2], 1e-3, beta=0.1)
    assert stats["kl"] == 0 and stats["ratio_dev"] == 0  # the reference itself: no KL; the rollout itself: ratio 1
    assert torch.isclose(loss, -adv.mean())  # at ratio 1 the surrogate is -A
    loss.backward()
    assert torch.allclose(logp.grad, -adv.expand(S, G) / (S * G))
    # a ratio past 1 + eps with A > 0 (or below 1 - eps with A < 0) is clipped: no gradient
    far = (old + torch.tensor([[0.01, -0.01, 0.0]])).requires_grad_(True)
    ppo_kl_loss(far, old, adv, mean, mean, [0.3, 0.2], 1e-3, 0.0)[0].backward()
    assert torch.all(far.grad[:, :2] == 0) and torch.all(far.grad[:, 2] != 0)
    # KL = ||mu - mu_ref||^2 / (2 s^2), mean over dims, over steps and samples
    shifted = mean + 0.1
    _, stats = ppo_kl_loss(old, old, adv, mean, shifted, [0.5, 0.5], 1e-3, 1.0)
    assert stats["kl"] == pytest.approx(0.01 / (2 * 0.25), rel=1e-4)


def test_first_update_sees_ratio_one_and_lora_starts_at_the_reference(make_config):
    trainer = Trainer(load_config(make_config()))
    record = trainer.train_step()
    assert record["ratio_dev_first"] == 0.0  # rollout and training replay are the same numbers, bit for bit
    assert record["kl"] < 1e-3  # KL to the reference starts at 0 (adapters B = 0) and stays small after one update
    assert {"reward", "reward/temporal", "reward/guards", "clipfrac", "loss"} <= set(record)
    trainer.train_step()
    assert any(p.abs().sum() > 0 for n, p in trainer.policy.net.named_parameters() if "lora_B" in n)


def test_a_run_writes_an_engine_checkpoint_logs_and_resumes(make_config, tmp_path):
    from engine.backends import load
    from engine.io import sha256_file
    from engine.io.checkpoint import read_metadata
    from engine.motion.learned import load_generator

    config = load_config(make_config("a", train={"steps": 3}))
    once = train(load_config(make_config("b", train={"steps": 3})), progress=False, command="test")
    # the same run killed after step 2 and rerun: it continues from last.pt to the same weights
    train(load_config(make_config("a", train={"steps": 2})), progress=False)
    path = train(config, progress=False)
    a, b = load_generator(path), load_generator(once)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-6), name
    records = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3]  # step 0: the held-out reward before training
    assert "eval/reward" in records[0] and "eval/reward" in records[2] and "eval/reward/guards" in records[3]
    assert (tmp_path / "a" / "curves.png").stat().st_size > 0
    _, provenance = read_metadata(once)
    assert provenance["rl"]["steps"] == 3 and provenance["rl"]["command"] == "test"
    assert provenance["rl"]["data_sha256"] == sha256_file(f"{config.data}/manifest.json")  # the RL corpus
    assert provenance["emotions"] and "reward" in provenance["rl"]["curves"]
    step = load("torch", once)  # what every engine command does with --checkpoint
    assert step.config == a.config


def test_export_merges_the_adapters(make_config):
    trainer = Trainer(load_config(make_config(train={"ema": 0.0})))
    trainer.train_step()
    trainer.train_step()
    merged = trainer.policy.export()
    assert not any("lora" in n for n in merged.state_dict())
    chunk_args = _chunk_inputs(trainer)
    with torch.no_grad():
        tuned = trainer.policy.net(*chunk_args)
        with trainer.policy.reference() as ref:
            reference = ref(*chunk_args)
        assert torch.allclose(merged(*chunk_args), tuned, atol=1e-5)
        assert (reference - tuned).abs().max() > 1e-3  # the adapters do change the network
        assert torch.equal(trainer.policy.net(*chunk_args), tuned)  # and are back on after the reference


def _chunk_inputs(trainer):
    from engine.motion.cache import KVCache

    cfg = trainer.policy.net.config
    cond = trainer.conditions(0)[0]
    return torch.randn(1, cfg.chunk, cfg.motion_dim), torch.tensor([0.4]), cond, KVCache.empty(cfg)


@pytest.mark.parametrize("dpo_self", [0.0, 1.0], ids=["corrupted-losers", "self-sampled-losers"])
def test_dpo_starts_at_log_2_and_learns_the_winners(make_config, dpo_self):
    trainer = Trainer(load_config(make_config(train={"objective": "dpo", "lr": 3e-3, "dpo_self": dpo_self},
                                              reward={})))
    first = trainer.train_step()
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference: no preference yet
    for _ in range(5):
        last = trainer.train_step()
    assert last["loss"] < first["loss"]


def test_config_errors_name_the_fix(make_config, tmp_path):
    with pytest.raises(UserError, match="unknown keys"):
        load_config(make_config(train={"stepz": 3}))
    with pytest.raises(UserError, match="train_steps"):
        load_config(make_config(rollout={"train_steps": [0, 1]}))
    with pytest.raises(UserError, match="GRPO needs a reward"):
        Trainer(load_config(make_config(reward={})))
    with pytest.raises(UserError, match="pause_seconds.*draft"):
        load_config(make_config(train={"pause_seconds": 1.0}))


class MouthOpen:
    """A simple reward the policy controls directly: the mean jawOpen."""

    name = "mouth_open"
    needs_frames = False

    def __call__(self, samples):
        from engine.motion import spec
        from rl.rewards import TermResult

        return TermResult(np.array([s.motion[:, spec.index("jawOpen")].mean() for s in samples], np.float64))


@pytest.mark.slow
def test_a_simple_reward_rises_within_15_steps(make_config):
    """The anchors' sanity check: a reward the network can reach rises within ~15 epochs, or there is a bug (a
    flipped advantage sign, a log-prob that is not the sampled step's, a reference leaking into the policy)."""
    from rl.rewards import CompositeReward

    trainer = Trainer(load_config(make_config(train={"prompts": 4, "pool": 4, "lr": 3e-2, "ema": 0.0,
                                                     "lora_rank": 4}, rollout={"group": 6})))
    trainer.reward = CompositeReward([(MouthOpen(), 1.0)])
    rewards = [trainer.train_step()["reward"] for _ in range(15)]
    assert np.mean(rewards[-4:]) > np.mean(rewards[:4]) + 0.05, rewards


@pytest.mark.parametrize("name", ["rl.toml", "demo.toml"])
def test_the_shipped_configs_parse(name):
    from rl.configs import DEFAULT_REWARD
    from rl.rewards import CompositeReward

    config = load_config(DEFAULT_REWARD.parent / name, data="data/synth")
    assert config.train.objective == "grpo" and config.rollout.train_steps == (1, 2)
    assert CompositeReward.from_dict(config.reward).weights  # the terms it names exist (a judge-less line is fine)


@pytest.mark.parametrize("name, config", [("motion", "ship.toml"), ("motion_fast", "ship_fast.toml")])
def test_the_shipped_rl_weights_were_made_by_their_config(name, config):
    """Each RL post-trained generator's recorded config is its rl/configs file's, but for the machine's paths
    (a setting added since a run was made counts at its default)."""
    import json
    from dataclasses import asdict

    from engine import assets
    from rl.configs import DEFAULT_REWARD

    recorded = json.loads((assets.ASSETS_DIR / "weights.json").read_text())[name]["provenance"]["rl"]["config"]
    ours = json.loads(json.dumps(asdict(load_config(DEFAULT_REWARD.parent / config))))  # tuples as JSON lists

    def differences(a: dict, b: dict, at: str = "") -> list[str]:
        return [d for k, v in a.items() if k not in ("data", "out", "checkpoint")
                for d in (differences(v, b.get(k, {}), f"{at}/{k}") if isinstance(v, dict)
                          else [] if b.get(k) == v else [f"{at}/{k}: {v} recorded, {b.get(k)} in {config}"])]

    assert differences(recorded, ours) == []


def test_full_fine_tune_keeps_a_frozen_reference(make_config):
    trainer = Trainer(load_config(make_config(train={"lora_rank": 0, "ema": 0.0, "lr": 1e-2})))
    before = {k: v.clone() for k, v in trainer.policy.net.state_dict().items()}
    record = trainer.train_step()
    assert record["ratio_dev_first"] == 0.0
    with trainer.policy.reference() as ref:
        assert all(torch.equal(v, before[k]) for k, v in ref.state_dict().items())
    assert any(not torch.equal(v, before[k]) for k, v in trainer.policy.net.state_dict().items())
    assert set(trainer.policy.export().state_dict()) == set(before)


class FrameCheck:
    """A pixel term: it only checks that each sample arrives rendered, one frame per motion row."""

    name = "frames"
    needs_frames = True

    def __call__(self, samples):
        from rl.rewards import TermResult

        for s in samples:
            assert s.portrait is not None and s.frames.shape == (len(s), 128, 128, 3)
        return TermResult(np.array([s.frames.astype(np.float64).std() for s in samples]))


def test_pixel_terms_get_rendered_rollouts(make_config):
    from rl.rewards import CompositeReward

    trainer = Trainer(load_config(make_config(train={"prompts": 1, "pool": 1})))
    trainer.reward = CompositeReward([(FrameCheck(), 1.0)])
    record = trainer.train_step()
    assert record["reward/frames"] > 0
