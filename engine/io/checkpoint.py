"""Checkpoints: weights as safetensors, the network's config and provenance inside the same file.

Like whisper's ModelDimensions, the config dataclass travels with the weights, so loading never
guesses shapes: `load_model` rebuilds the module from the stored config, then loads the tensors.
safetensors metadata is a flat str->str map; the config and any extra provenance (data command,
seed, steps, metrics) are stored there as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, TypeVar

from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from engine.errors import UserError

FORMAT = "avatar-engine-checkpoint"


class Config(Protocol):
    def to_dict(self) -> dict: ...


M = TypeVar("M", bound=nn.Module)


def save_checkpoint(path: str | Path, model: nn.Module, config: Config, **provenance) -> Path:
    """Write `model`'s tensors with its config and provenance (JSON-serializable keyword values)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "config": json.dumps(config.to_dict()), "provenance": json.dumps(provenance)}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.chmod(0o644)  # safetensors creates files 0600; weights are meant to be shared and shipped
    tmp.replace(path)  # atomic: an interrupted save never leaves a truncated checkpoint behind
    return path


def read_metadata(path: str | Path) -> tuple[dict, dict]:
    """(config dict, provenance dict) of a checkpoint, without loading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass the .safetensors file a training run wrote")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except SafetensorError as err:
        raise UserError(f"{path} is not a safetensors checkpoint ({err}); pass a file written by avatar train") from err
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is a safetensors file but not an avatar-engine checkpoint (no config inside)")
    return json.loads(meta["config"]), json.loads(meta.get("provenance", "{}"))


def load_model(path: str | Path, model_cls: type[M], config_cls) -> tuple[M, object, dict]:
    """Rebuild `model_cls(config)` from the stored config and load its weights: (model, config, provenance)."""
    config_dict, provenance = read_metadata(path)
    config = config_cls.from_dict(config_dict)
    model = model_cls(config)
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"checkpoint {path} does not match {model_cls.__name__}: missing {sorted(missing)[:5]}, "
                        f"unexpected {sorted(unexpected)[:5]}; it was written by a different version of the network")
    return model.eval(), config, provenance


__all__ = ["save_checkpoint", "load_model", "read_metadata"]
