"""The rl package ships its reward config (engine/ never importing rl/ is tests/engine/backends/test_imports.py)."""


def test_the_default_reward_config_ships_with_the_package():
    from rl.configs import DEFAULT_REWARD

    assert DEFAULT_REWARD.is_file()
