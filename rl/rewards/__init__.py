"""Rewards for RL post-training (DESIGN.md §8): each term scores a batch of rollout `Sample`s (one float per sample,
higher is better, plus named per-sample diagnostics); `CompositeReward` weights them from a TOML config.

Terms (config table: class): [judge] JudgeTerm (an MLLM's three rubric scores, HTTP or local backend),
[sync] SyncTerm (the lip-sync expert), [alignment] AlignmentTerm (forced-aligned mouth opening, with a transcript),
[perceptual] PerceptualTerm (identity and texture outside the mouth), [temporal] TemporalTerm (roughness, jitter,
flicker), [guards] GuardTerm (frozen, shaking, mouth stuck open; `tripped`), [target] TargetTerm (motion statistics
against the clip's own corpus target: head sway, jitter, roughness, articulation, closures, tracking).

For the rollout and the trainer:
    reward = CompositeReward.from_config(rl.configs.DEFAULT_REWARD)   # prints the no-judge line if there is none
    if reward.needs_frames: render each rollout small (train.eval_video.render with a Renderer of the portrait
        analysed at e.g. 128 px) and pass the frames and that Portrait
    samples = [Sample(audio, features, motion_g, portrait, frames_g, transcript) for each prompt, for g in G]
    out = reward(samples)      # out.total (B,), out.terms[name] (B,), out.diagnostics["term/name"] (B,), out.tripped
    log.write(json.dumps({"step": step, **out.summary()}))   # one float per term and diagnostic
- Pass the same audio, features and transcript objects to a prompt's G samples: per-prompt work (alignment) is
  cached on the audio's hash.
- Terms are deterministic and never normalise across the batch; group-normalise `out.total` for advantages.
  Under DDP, compute rewards on each rank's own samples and gather `total` (and the terms, for logging) before the
  advantages.
- Scales differ (judge in [0, 1], sync ~0..0.3, the rest penalties <= 0 that are 0 on healthy motion); the config's
  weights set their relative pull. A failed judge rating counts as 0.5 (diagnostic judge/failed).
"""

from rl.rewards.base import RewardTerm, Sample, TermResult
from rl.rewards.composite import CompositeReward, RewardBreakdown

__all__ = ["CompositeReward", "RewardBreakdown", "RewardTerm", "Sample", "TermResult"]
