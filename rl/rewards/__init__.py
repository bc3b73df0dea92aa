"""Rewards for RL post-training (DESIGN.md §8): each term scores a batch of rollout `Sample`s (one float per sample,
higher is better, plus named diagnostics); `CompositeReward` weights them from a TOML config.

Terms: judge (an MLLM's rubric scores), sync (the lip-sync expert), alignment (forced-aligned mouth opening),
perceptual (identity and texture outside the mouth), temporal (roughness, jitter, flicker), guards (frozen,
shaking, mouth stuck open)."""

from rl.rewards.base import RewardTerm, Sample, TermResult
from rl.rewards.composite import CompositeReward, RewardBreakdown

__all__ = ["CompositeReward", "RewardBreakdown", "RewardTerm", "Sample", "TermResult"]
