"""Which motion driver runs, as a typed choice made once (by the CLI or whoever builds a config): the
learned generator's options live on `Learned` alone, so none can be set on the baseline and quietly ignored."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError


@dataclass(frozen=True)
class Baseline:
    """The hand-written driver (loudness, spectrum, lip shapes): nothing to load, nowhere else to run."""


@dataclass(frozen=True)
class Learned:
    """The flow-matching generator: its weights (None: the shipped ones offline, the preset's live), where it
    runs (engine.backends: auto, torch, onnxruntime, tensorrt) and its sampler (None: the defaults offline,
    the preset's steps live)."""

    checkpoint: Path | None = None
    backend: str = "auto"
    steps: int | None = None
    guidance_audio: float | None = None
    guidance_emotion: float | None = None

    def __post_init__(self):
        from engine.backends import BACKENDS

        if self.backend not in BACKENDS:
            raise UserError(f"unknown backend {self.backend!r}; use one of {', '.join(BACKENDS)}")

    def sampler_options(self) -> dict:
        """The sampler settings this choice fixes (to pass on to LearnedOptions)."""
        names = ("steps", "guidance_audio", "guidance_emotion")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


Driver = Baseline | Learned
