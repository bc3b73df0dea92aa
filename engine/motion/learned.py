"""The learned driver: the flow-matching generator over a whole clip, with the user's controls.

    driver = LearnedDriver(load_generator(), LearnedOptions(emotion="happy"))
    motion = driver.drive(extract_features(samples))  # (T, spec.D) raw coefficients

It runs exactly the streaming path (engine.motion.generator.StreamingGenerator, chunk by chunk
with the KV cache); the end of the clip is padded with silence so the last chunk and its lookahead
are whole. Expressiveness and head motion scale the generated offsets from neutral afterwards
(blinks excepted), as the baseline driver's controls do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine import assets
from engine.audio.frontend import AudioFeatures
from engine.errors import UserError
from engine.io.checkpoint import load_model
from engine.motion import spec
from engine.motion.baseline import EMOTIONS, BaselineOptions
from engine.motion.generator import StreamingGenerator, silence
from engine.motion.model import MotionConfig, MotionTransformer
from engine.motion.sampler import SamplerOptions

_HEAD = [spec.index(n) for n in spec.NAMES if n.startswith("head")]
_BLINK = [spec.index("eyeBlink_L"), spec.index("eyeBlink_R")]
_FACE = [i for i in range(spec.D) if i not in _HEAD and i not in _BLINK]


@dataclass(frozen=True)
class LearnedOptions(BaselineOptions):
    """The baseline's controls plus the sampler's: Euler steps and guidance scales (1 = none)."""

    steps: int = 4  # Euler steps per chunk
    guidance_audio: float = 1.0  # > 1 follows the audio more strongly (larger lip motion)
    guidance_emotion: float = 1.0  # > 1 exaggerates the emotion

    def __post_init__(self):
        super().__post_init__()
        try:
            self.sampler()
        except ValueError as err:
            raise UserError(str(err)) from err

    def sampler(self) -> SamplerOptions:
        return SamplerOptions(self.steps, self.guidance_audio, self.guidance_emotion)


def load_generator(path: str | Path | None = None) -> MotionTransformer:
    """The generator of a checkpoint (default: the shipped weights), checked against this code's emotions."""
    path = Path(path) if path is not None else assets.DEFAULT_MOTION
    if not path.is_file():
        raise UserError(f"motion checkpoint {path} does not exist; train one with `avatar train motion --data DIR "
                        f"--out ckpt/` (see engine/assets/README.md) or use `--driver baseline`")
    model, _, provenance = load_model(path, MotionTransformer, MotionConfig)
    trained = provenance.get("emotions")
    if trained is not None and list(trained) != list(EMOTIONS):
        raise UserError(f"{path} was trained with emotions {trained}, this code has {list(EMOTIONS)}: the emotion "
                        "embedding rows would mean different things; retrain it or use the matching version")
    return model


class LearnedDriver:
    def __init__(self, model: MotionTransformer, options: LearnedOptions = LearnedOptions()):
        self.options = options
        self.generator = StreamingGenerator(model, options.sampler(), seed=options.seed)

    @torch.inference_mode()
    def drive(self, features: AudioFeatures) -> np.ndarray:
        """Whole clip at once: a fresh stream over `features` -> (T, spec.D) raw motion within bounds."""
        cfg = self.generator.config
        L, K, T = cfg.chunk, cfg.lookahead, len(features)
        padded = AudioFeatures.concat([features, silence(-T % L + K)])
        self.generator.reset()
        chunks = [self.generator.step(padded[s : s + L + K], self.options.emotion) for s in range(0, T, L)]
        motion = np.concatenate(chunks)[:T] if chunks else spec.neutral(0)
        return self._controls(motion)

    def _controls(self, motion: np.ndarray) -> np.ndarray:
        neutral = spec.neutral()
        out = motion.copy()
        out[:, _FACE] = neutral[_FACE] + self.options.expressiveness * (motion[:, _FACE] - neutral[_FACE])
        out[:, _HEAD] = neutral[_HEAD] + self.options.head_motion * (motion[:, _HEAD] - neutral[_HEAD])
        return spec.clip(out)


__all__ = ["EMOTIONS", "LearnedDriver", "LearnedOptions", "load_generator"]
