"""The composite reward: weighted terms from a TOML config, each logged on its own.

    reward = CompositeReward.from_config("rl/configs/default.toml")
    result = reward(samples)          # RewardBreakdown: total (B,), per-term values, diagnostics, tripped
    log.write(json.dumps(result.summary()))

The config has one table per term, [judge], [sync], [alignment], [perceptual], [temporal], [guards], [target];
each holds `weight` (0 or a missing table: the term is off) and the term's options (its Options dataclass's
fields). total = sum(weight * value). Without a judge (no [judge] table, backend = "none", or weight 0) the
reward says so in one line and runs on the other terms.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from engine.errors import UserError
from rl.configs import read_toml
from rl.rewards.base import RewardTerm, Sample, TermResult
from rl.rewards.guards import GuardOptions, GuardTerm
from rl.rewards.judge import JudgeOptions, JudgeTerm
from rl.rewards.perceptual import PerceptualOptions, PerceptualTerm
from rl.rewards.sync import AlignmentTerm, SyncOptions, SyncTerm
from rl.rewards.target import TargetOptions, TargetTerm
from rl.rewards.temporal import TemporalOptions, TemporalTerm

NO_JUDGE = "reward: no MLLM judge configured ([judge] backend); training on the other terms: {terms}"

# term name -> (options dataclass or None, maker from options)
TERMS: dict[str, tuple[type | None, Callable[..., RewardTerm | None]]] = {
    "judge": (JudgeOptions, JudgeTerm.from_options),
    "sync": (SyncOptions, SyncTerm),
    "alignment": (None, lambda: AlignmentTerm()),
    "perceptual": (PerceptualOptions, PerceptualTerm),
    "temporal": (TemporalOptions, TemporalTerm),
    "guards": (GuardOptions, GuardTerm),
    "target": (TargetOptions, TargetTerm),
}


@dataclass(frozen=True)
class RewardBreakdown:
    """The composite reward of a batch of B samples."""

    total: np.ndarray  # (B,) sum of weight * term value
    terms: dict[str, np.ndarray]  # term name -> (B,) its unweighted value
    diagnostics: dict[str, np.ndarray]  # "term/name" -> (B,)
    tripped: np.ndarray  # (B,) bool: any guard tripped

    def summary(self) -> dict[str, float]:
        """Batch means, flat, for a JSONL log line: reward, reward/<term>, <term>/<diagnostic>, tripped."""
        out = {"reward": float(np.mean(self.total))}
        out |= {f"reward/{k}": float(np.mean(v)) for k, v in self.terms.items()}
        out |= {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
                for k, v in self.diagnostics.items()}
        out["tripped"] = float(np.mean(self.tripped))
        return out


class CompositeReward:
    """Weighted sum of reward terms; `needs_frames` says whether the rollouts must be rendered."""

    def __init__(self, terms: Sequence[tuple[RewardTerm, float]], log: Callable[[str], None] | None = None):
        if not terms:
            raise UserError("the reward has no terms: give at least one term a weight > 0 in the reward config")
        self.terms = list(terms)
        if not any(term.name == "judge" for term, _ in self.terms) and log is not None:
            log(NO_JUDGE.format(terms=", ".join(f"{t.name} x{w:g}" for t, w in self.terms)))

    @property
    def needs_frames(self) -> bool:
        return any(term.needs_frames for term, _ in self.terms)

    @property
    def weights(self) -> dict[str, float]:
        return {term.name: weight for term, weight in self.terms}

    @classmethod
    def from_config(cls, path: str | Path, log: Callable[[str], None] | None = None) -> CompositeReward:
        """Build the terms a TOML config names (see the module docstring); `log` gets the no-judge line
        (default: stderr)."""
        config = read_toml(path, "reward config", "rl/configs/default.toml")
        return cls.from_dict(config, str(path), log or (lambda line: print(line, file=sys.stderr)))

    @classmethod
    def from_dict(cls, config: dict, source: str = "the reward config",
                  log: Callable[[str], None] | None = None) -> CompositeReward:
        unknown = set(config) - set(TERMS)
        if unknown:
            raise UserError(f"{source}: unknown reward terms {sorted(unknown)}; the terms are {list(TERMS)}")
        terms = []
        for name, (options_class, make) in TERMS.items():
            table = dict(config.get(name, {}))
            weight = float(table.pop("weight", 0.0))
            if weight == 0:
                continue
            if options_class is None:
                if table:
                    raise UserError(f"{source}: [{name}] takes only `weight`; got {sorted(table)}")
                term = make()
            else:
                allowed = {f.name for f in fields(options_class)}
                if set(table) - allowed:
                    raise UserError(f"{source}: [{name}] has unknown keys {sorted(set(table) - allowed)}; "
                                    f"it takes weight and {sorted(allowed)}")
                if "rubrics" in table:
                    table["rubrics"] = tuple(table["rubrics"])
                try:
                    options = options_class(**table)
                except (ValueError, TypeError) as err:
                    raise UserError(f"{source}: [{name}]: {err}") from err
                term = make(options)
            if term is not None:  # a judge with backend "none"
                terms.append((term, weight))
        return cls(terms, log)

    def __call__(self, samples: Sequence[Sample]) -> RewardBreakdown:
        B = len(samples)
        total = np.zeros(B)
        values: dict[str, np.ndarray] = {}
        diagnostics: dict[str, np.ndarray] = {}
        tripped = np.zeros(B, bool)
        for term, weight in self.terms:
            result: TermResult = term(samples)
            if np.shape(result.values) != (B,):
                raise ValueError(f"reward term {term.name} returned {np.shape(result.values)} values for {B} samples")
            values[term.name] = np.asarray(result.values, np.float64)
            total += weight * values[term.name]
            diagnostics |= {f"{term.name}/{k}": v for k, v in result.diagnostics.items()}
            if result.tripped is not None:
                tripped |= result.tripped
        return RewardBreakdown(total, values, diagnostics, tripped)
