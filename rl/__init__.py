"""RL post-training of the motion generator (DESIGN.md §8): rewards (rl.rewards), rollouts (rl.rollout), the GRPO
trainer and `avatar rl train` (rl.grpo), the reward-free Flow-DPO objective (rl.dpo), LoRA policy and reference
(rl.policy). The engine never imports this package; only engine/cli.py dispatches to it."""
