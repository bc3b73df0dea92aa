"""What every resumable training run shares (train.pretrain, train.sync_expert): atomic resume files,
the check that a resume continues the same run, the step loop with its log and progress bar, and
the common command-line options.

A run object has `step`, `scheduler`, `save(path)` and `load(path)`; its options have `steps`,
`val_every`, `save_every` and `run_identity()`. In --out: last.pt (resume state) and log.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
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


def resume(run, out: Path) -> list[dict]:
    """Make `out`, continue `run` from out/last.pt if it is there, and return the log records up to its
    step (a run killed after logging past its last save logged steps last.pt does not hold)."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / "last.pt").exists():
        run.load(out / "last.pt")
    log = out / "log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    records = [r for r in records if r["step"] <= run.step]
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def train_steps(run, options, out: Path, records: list[dict], step: Callable[[], float],
                validate: Callable[[], dict] | None, postfix: Callable[[dict], dict], desc: str,
                progress: bool = True) -> None:
    """Step `run` until options.steps: each step's loss and LR (and, every val_every steps and at the end,
    `validate()`'s metrics) appended to `records` and out/log.jsonl; last.pt every save_every steps."""
    from tqdm import tqdm

    last = out / "last.pt"
    bar = tqdm(total=options.steps, initial=run.step, disable=not progress, desc=desc, unit="step")
    with (out / "log.jsonl").open("a") as log:
        while run.step < options.steps:
            lr = run.scheduler.get_last_lr()[0]
            loss = step()  # advances run.step
            record = {"step": run.step, "loss": loss, "lr": lr}
            if validate is not None and (run.step % options.val_every == 0 or run.step == options.steps):
                record |= validate()
            records.append(record)
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.set_postfix(postfix(record))
            bar.update(1)
            if run.step % options.save_every == 0 or run.step == options.steps:
                run.save(last)
    bar.close()
    if run.step > 0 and not last.exists():
        run.save(last)


def add_run_arguments(parser: argparse.ArgumentParser, defaults, configs) -> None:
    """The options every training command takes, with `defaults` (an options instance) shown in --help."""
    parser.add_argument("--data", type=Path, required=True, help="corpus directory holding manifest.json")
    parser.add_argument("--out", type=Path, required=True, help="output directory (resumes if last.pt is there)")
    parser.add_argument("--steps", type=int, default=defaults.steps,
                        help=f"train until this step (default {defaults.steps}); a larger value extends a run "
                             "whose --lr-decay-steps was fixed")
    parser.add_argument("--lr", type=float, default=defaults.lr, help=f"peak learning rate ({defaults.lr})")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help=f"warmup steps ({defaults.warmup})")
    parser.add_argument("--lr-decay-steps", type=int, default=None,
                        help="cosine decay horizon in steps (default: --steps)")
    parser.add_argument("--val-every", type=int, default=defaults.val_every,
                        help=f"validate on held-out voices every N steps ({defaults.val_every})")
    parser.add_argument("--save-every", type=int, default=defaults.save_every,
                        help=f"write last.pt every N steps ({defaults.save_every})")
    parser.add_argument("--config", choices=sorted(configs), default=defaults.config,
                        help="network size: tiny for smoke tests, default for the shipped weights")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of init, sampling and noise")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to log.jsonl)")
