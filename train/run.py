"""What every resumable training run shares: atomic resume files, and the check that a resume
continues the same run (train.pretrain, train.sync_expert)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from engine.errors import UserError


def save_state(state: dict, path: Path) -> None:
    """torch.save, atomically: a kill during the save leaves the previous file intact."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path, options) -> dict:
    """The state saved at `path`, refused (UserError saying what to do) unless `options` continue its run.

    `options` is a frozen dataclass with `steps` and `run_identity()` (what shapes the weights)."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    saved, now = type(options)(**state["options"]).run_identity(), options.run_identity()
    if saved != now:
        diff = {k: (v, now[k]) for k, v in saved.items() if now[k] != v}
        hint = ""
        if "lr_decay_steps" in diff:
            hint = (f" (--steps sets the cosine horizon unless --lr-decay-steps is given: to extend this run "
                    f"pass --lr-decay-steps {saved['lr_decay_steps']})")
        raise UserError(f"{path} was written with different options {{name: (saved, now)}} {diff}{hint}; rerun "
                        f"with the saved options to continue it, or pass a new --out to start a fresh run")
    if state["step"] > options.steps:
        raise UserError(f"{path} is already at step {state['step']}, past --steps {options.steps}; "
                        "pass a larger --steps to continue training")
    return state
