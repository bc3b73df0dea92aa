"""Shipped RL configs (TOML). DEFAULT_REWARD: the composite reward's weights and term options."""

import tomllib
from pathlib import Path

from engine.errors import UserError

DEFAULT_REWARD = Path(__file__).parent / "default.toml"


def read_toml(path: str | Path, kind: str, example: str) -> dict:
    """A TOML config's tables; a UserError naming the file (and `example` to start from) when it is missing
    or not TOML. `kind` names it in the message ("RL config", "reward config")."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{kind} {path} does not exist; start from {example}") from None
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{kind} {path} is not valid TOML: {err}") from err
