"""Shipped RL configs (TOML). DEFAULT_REWARD: the composite reward's weights and term options."""

from pathlib import Path

DEFAULT_REWARD = Path(__file__).parent / "default.toml"
