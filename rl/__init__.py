"""RL post-training of the motion generator (DESIGN.md §8): rewards (rl.rewards), and later rollouts and the
GRPO trainer. The engine never imports this package; only engine/cli.py dispatches to it."""
