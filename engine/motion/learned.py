"""The learned driver: the flow-matching generator over a whole clip, with the user's controls.

    driver = LearnedDriver(load_generator(), LearnedOptions(emotion="happy"))
    motion = driver.drive(extract_features(samples))  # (T, spec.D) raw coefficients

It runs exactly the streaming path (engine.motion.generator.StreamingGenerator, chunk by chunk
with the KV cache); the end of the clip is padded with silence so the last chunk and its lookahead
are whole. Expressiveness and head motion scale the generated offsets from neutral afterwards
(blinks excepted), as the baseline driver's controls do.

Blinks are drawn, not generated: they are a renewal process that no audio predicts, and the network's
blink channel regresses to its mean (the shipped model never closes an eye: max eyeBlink ~0.05 over
the sample speech). The driver therefore runs the very BlinkProcess the corpus targets were drawn
from (engine.motion.baseline), gated by the VAD and seeded by the options, on the blink channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import assets
from engine.audio.frontend import AudioFeatures
from engine.backends import ChunkStep
from engine.errors import UserError
from engine.io.checkpoint import load_model, read_metadata
from engine.motion import spec
from engine.motion.baseline import EMOTIONS, BaselineOptions, BlinkProcess, frame_draws
from engine.motion.generator import StreamingGenerator, silence
from engine.motion.model import MotionConfig, MotionTransformer
from engine.motion.sampler import SamplerOptions

_HEAD = [spec.index(n) for n in spec.NAMES if n.startswith("head")]
_BLINK = [spec.index("eyeBlink_L"), spec.index("eyeBlink_R")]
_WIDE = [spec.index("eyeWide_L"), spec.index("eyeWide_R")]
_FACE = [i for i in range(spec.D) if i not in _HEAD and i not in _BLINK]


# The pretrained generators' audio guidance: chosen on held-out synthetic voices (benchmarks/results/
# guidance_sweep.md), never on the human set.
GUIDANCE_AUDIO = 2.0


def weights_sampler(path: str | Path | None = None) -> dict[str, float]:
    """The guidance a checkpoint was made to be sampled with, as LearnedOptions fields, for wherever it is loaded
    and the user set none: RL weights record their rollouts' (`sampler` in their provenance; rolled out without
    guidance, guidance_audio 1: one generator call a step instead of three); older weights record none ({}: the
    defaults)."""
    _, provenance = read_metadata(path if path is not None else assets.DEFAULT_MOTION)
    return {k: float(v) for k, v in provenance.get("sampler", {}).items() if k in ("guidance_audio", "guidance_emotion")}


def guidance_of(sampler: SamplerOptions) -> dict[str, float]:
    """A sampler's guidance scales as LearnedOptions fields: a driver over a loaded step keeps the guidance the step
    was loaded with (its weights', weights_sampler)."""
    return {"guidance_audio": sampler.guidance_audio, "guidance_emotion": sampler.guidance_emotion}


@dataclass(frozen=True)
class LearnedOptions(BaselineOptions):
    """The baseline's controls plus the sampler's: Euler steps and guidance scales (1 = none)."""

    steps: int = 4  # Euler steps per chunk
    # > 1 follows the audio more strongly: larger lip motion in speech, a mouth held closed in silence. Weights
    # made for another scale say so (weights_sampler): pass theirs where they are loaded.
    guidance_audio: float = GUIDANCE_AUDIO
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


class Blinks:
    """Eye blinks for a stream, frame by frame from its VAD (any chunking gives the same blinks)."""

    def __init__(self, seed: int):
        self._rng = np.random.default_rng([seed, 1])  # apart from the generator's noise stream
        self._process = BlinkProcess()

    def step(self, vad: np.ndarray) -> np.ndarray:
        """(T,) VAD speech probabilities -> (T,) eyeBlink values."""
        draws, _ = frame_draws(self._rng, len(vad))
        gate = np.clip((vad - 0.2) / 0.4, 0, 1)  # the baseline's speech gate
        return np.array([self._process.step(float(d), float(g)) for d, g in zip(draws, gate)], np.float32)


class LearnedDriver:
    """The generator plus drawn blinks plus the user's controls, as a stream (`step`) or a whole clip (`drive`)."""

    def __init__(self, step: ChunkStep, options: LearnedOptions = LearnedOptions()):
        """step: a backend's chunk step (engine.backends), made to sample with the options' sampler."""
        self.options = options
        self.generator = StreamingGenerator(step.with_sampler(options.sampler()), seed=options.seed)
        self.config = step.config
        self.reset()

    def reset(self) -> None:
        """A fresh stream: empty cache, silent audio history, blinks and noise from the seed."""
        self.generator.reset()
        self._blinks = Blinks(self.options.seed)

    def set_options(self, options: LearnedOptions) -> None:
        """New controls and sampler settings, applied from the next chunk (the stream goes on)."""
        self.options = options
        self.generator.chunk_step = self.generator.chunk_step.with_sampler(options.sampler())

    def step(self, features: AudioFeatures) -> np.ndarray:
        """Features of the next L + K frames (the chunk and its lookahead) -> (L, spec.D) raw motion."""
        motion = self.generator.step(features, self.options.emotion)
        blink = self._blinks.step(features.vad[: self.config.chunk])[:, None]
        motion[:, _BLINK] = blink
        motion[:, _WIDE] *= 1.0 - blink  # a blink closes wide eyes too
        return self.apply_controls(motion)

    def drive(self, features: AudioFeatures) -> np.ndarray:
        """Whole clip at once: a fresh stream over `features` -> (T, spec.D) raw motion within bounds."""
        L, K, T = self.config.chunk, self.config.lookahead, len(features)
        padded = AudioFeatures.concat([features, silence(-T % L + K)])
        self.reset()
        chunks = [self.step(padded[s : s + L + K]) for s in range(0, T, L)]
        return np.concatenate(chunks)[:T] if chunks else spec.neutral(0)

    def apply_controls(self, motion: np.ndarray) -> np.ndarray:
        """Scale (T, D) motion's offsets from neutral: expressiveness for the face, head_motion for the head."""
        neutral = spec.neutral()
        out = motion.copy()
        out[:, _FACE] = neutral[_FACE] + self.options.expressiveness * (motion[:, _FACE] - neutral[_FACE])
        out[:, _HEAD] = neutral[_HEAD] + self.options.head_motion * (motion[:, _HEAD] - neutral[_HEAD])
        return spec.clip(out)


__all__ = ["EMOTIONS", "Blinks", "LearnedDriver", "LearnedOptions", "load_generator"]
