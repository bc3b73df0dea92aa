"""The signal-processing baseline driver: audio features -> motion coefficients, no learning.

It is the reference the generator must beat and the fallback when no weights are at hand:
- Mouth: jawOpen (with a little mouthLowerDown/UpperUp) follows loudness, i.e. energy relative
  to a running reference level, gated by VAD and weighted by voicing, with a fast attack and a
  slower release. Silence closes the mouth. Vowel colour comes from the mel spectrum: a low
  spectral centroid with little energy above 1.5 kHz reads as a rounded vowel (funnel/pucker),
  a strong 1.5-3.5 kHz band (high F2) as a front vowel (stretch, a hint of smile).
- Eyes: blinks as a renewal process (a minimum gap, then a constant hazard; ~17/min at rest,
  fewer while speaking, more just after speech stops), each a 200 ms close/open profile
  reaching 1.0 on both eyes.
- Head: yaw/pitch/roll of a few degrees from low-passed noise whose amplitude follows speech
  loudness, nods on emphasis, and a slow breathing sway. Brows rise on emphasis (a loudness or
  pitch jump above its running level).
- Emotion: constant expression offsets (eased in when changed mid-stream by `set_options`).

The driver is a stream: `step` keeps every filter and random process across calls, drawing a
fixed number of random numbers per frame, so any chunking of the same features gives the same
motion for the same seed. Its random processes (BlinkProcess, HeadProcess, EmphasisTracker, fed by
frame_draws) are public so the synthetic corpus (train/synth/corpus.py) draws targets from the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.special import ndtri

from engine.audio.frontend import AudioFeatures
from engine.audio.mel import mel_center_frequencies
from engine.errors import UserError
from engine.motion import spec
from engine.timebase import FPS

EMOTIONS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")


@dataclass(frozen=True)
class BaselineOptions:
    emotion: str = "neutral"  # one of EMOTIONS: a constant expression on top of speech
    expressiveness: float = 1.0  # scales articulation, brow emphasis and emotion (0 = still face, max 2)
    head_motion: float = 1.0  # scales head rotation and sway (0 = still head, max 3)
    seed: int = 0  # seeds blinks and head motion: the same seed and audio give the same motion

    def __post_init__(self):  # UserError (a ValueError): options come from the CLI and live controls
        if self.emotion not in EMOTIONS:
            raise UserError(f"emotion must be one of {', '.join(EMOTIONS)}; got {self.emotion!r}")
        if not 0.0 <= self.expressiveness <= 2.0:
            raise UserError(f"expressiveness must be in [0, 2] (1 = default); got {self.expressiveness}")
        if not 0.0 <= self.head_motion <= 3.0:
            raise UserError(f"head_motion must be in [0, 3] (1 = default, 0 = still); got {self.head_motion}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise UserError(f"seed must be a non-negative integer; got {self.seed!r}")


# Expression offsets per emotion (raw coefficient units, before expressiveness).
EMOTION_OFFSETS: dict[str, dict[str, float]] = {
    "neutral": {},
    "happy": {"mouthSmile_L": 0.55, "mouthSmile_R": 0.55, "cheekSquint_L": 0.35, "cheekSquint_R": 0.35,
              "eyeSquint_L": 0.15, "eyeSquint_R": 0.15},
    "sad": {"mouthFrown_L": 0.45, "mouthFrown_R": 0.45, "browInnerUp": 0.55, "mouthShrugLower": 0.15,
            "eyeSquint_L": 0.1, "eyeSquint_R": 0.1},
    "angry": {"browDown_L": 0.6, "browDown_R": 0.6, "noseSneer_L": 0.3, "noseSneer_R": 0.3,
              "mouthPress_L": 0.2, "mouthPress_R": 0.2, "eyeSquint_L": 0.25, "eyeSquint_R": 0.25},
    "surprise": {"eyeWide_L": 0.55, "eyeWide_R": 0.55, "browOuterUp_L": 0.55, "browOuterUp_R": 0.55,
                 "browInnerUp": 0.5, "jawOpen": 0.1},
    "disgust": {"noseSneer_L": 0.5, "noseSneer_R": 0.5, "mouthUpperUp_L": 0.3, "mouthUpperUp_R": 0.3,
                "browDown_L": 0.25, "browDown_R": 0.25, "mouthFrown_L": 0.15, "mouthFrown_R": 0.15},
    "fear": {"eyeWide_L": 0.5, "eyeWide_R": 0.5, "browInnerUp": 0.6, "mouthStretch_L": 0.35,
             "mouthStretch_R": 0.35, "browOuterUp_L": 0.2, "browOuterUp_R": 0.2},
}

# Mouth.
JAW_PEAK = 0.65  # jawOpen on the loudest voiced frames (readable on video)
LOUDNESS_RANGE_DB = 30.0  # loudness 0..1 spans this many dB below the reference level
REFERENCE_FLOOR_DB = -40.0  # the running reference never drops below this, so noise never reads as loud
REFERENCE_DECAY_DB = 3.0 / FPS  # per frame: the reference follows a peak down at 3 dB/s
JAW_ATTACK, JAW_RELEASE = 0.7, 0.4  # per-frame smoothing toward the target: open fast, close a bit slower
SHAPE_SMOOTHING = 0.5  # per-frame smoothing of vowel shapes
FRONT_BAND_DB = (-14.0, -8.0)  # 1.5-3.5 kHz over 0.2-1 kHz band ratio: back vowel -> front vowel
ROUND_CENTROID_HZ = (600.0, 350.0)  # spectral centroid (below 5 kHz): open vowel -> rounded vowel

# Blinks.
BLINK_MEAN_INTERVAL_S = 60.0 / 17  # at rest
BLINK_MIN_GAP_S = 1.2  # no blink sooner than this after the last one
BLINK_SPEECH_FACTOR = 0.65  # hazard while speaking
BLINK_PAUSE_FACTOR = 3.0  # hazard just after speech stops
BLINK_PAUSE_WINDOW_S = 0.4  # how long "just after" lasts
BLINK_PROFILE = (0.55, 1.0, 0.8, 0.45, 0.15)  # eyeBlink per frame: 200 ms, closing faster than opening

# Head (radians unless stated).
HEAD_CUTOFF_HZ = 0.35  # the head wanders slowly
HEAD_IDLE = np.array([0.015, 0.01, 0.007])  # yaw, pitch, roll std at rest (~0.9, 0.6, 0.4 degrees)
HEAD_SPEECH = np.array([0.03, 0.02, 0.012])  # extra std at full loudness
NOD = 0.04  # pitch on full emphasis (nods down)
BREATH_PERIOD_S = 4.5
BREATH_PITCH, BREATH_Y = 0.006, 0.003  # radians, face widths
BROW_EMPHASIS = 0.35  # brow raise on full emphasis


def _pole(cutoff_hz: float) -> float:
    """Per-frame coefficient of a one-pole low-pass with this cutoff."""
    return 1.0 - float(np.exp(-2 * np.pi * cutoff_hz / FPS))


def _cascade_std(a: float) -> float:
    """Stationary std of two cascaded one-pole low-passes (coefficient a) driven by unit white noise."""
    k = np.arange(4000)
    impulse = a * a * (k + 1) * (1 - a) ** k  # the cascade's impulse response
    return float(np.sqrt(np.sum(impulse**2)))


_HEAD_A = _pole(HEAD_CUTOFF_HZ)
_HEAD_GAIN = 1.0 / _cascade_std(_HEAD_A)  # normalizes the filtered noise to unit std
_LEVEL_A = _pole(0.5)  # smoothing of loudness that sets head-motion amplitude
_FAST_A, _SLOW_A = _pole(2.5), _pole(0.1)  # emphasis: fast loudness against its slow running level
_F0_A = _pole(0.1)  # running F0 level (semitones)
_ACTIVITY_A = _pole(1.0)  # smoothing of the speech gate that decides speaking vs pause
_OFFSET_A = _pole(1.5)  # how fast a new emotion eases in (live controls)
_BLINK_HAZARD = 1.0 / ((BLINK_MEAN_INTERVAL_S - BLINK_MIN_GAP_S) * FPS)  # per frame after the minimum gap

_CENTRES = mel_center_frequencies()
_LOW_BAND = (_CENTRES > 200) & (_CENTRES < 1000)  # F1 region
_HIGH_BAND = (_CENTRES > 1500) & (_CENTRES < 3500)  # F2/F3 of front vowels
_CENTROID_BAND = _CENTRES < 5000

_I = spec.index
_JAW = _I("jawOpen")
_LOWER, _UPPER = [_I("mouthLowerDown_L"), _I("mouthLowerDown_R")], [_I("mouthUpperUp_L"), _I("mouthUpperUp_R")]
_FUNNEL, _PUCKER = _I("mouthFunnel"), _I("mouthPucker")
_STRETCH, _SMILE = [_I("mouthStretch_L"), _I("mouthStretch_R")], [_I("mouthSmile_L"), _I("mouthSmile_R")]
_BLINK, _WIDE = [_I("eyeBlink_L"), _I("eyeBlink_R")], [_I("eyeWide_L"), _I("eyeWide_R")]
_BROWS = [_I("browInnerUp"), _I("browOuterUp_L"), _I("browOuterUp_R")]
_HEAD_ROT = [_I("headYaw"), _I("headPitch"), _I("headRoll")]
_HEAD_Y = _I("headY")


def _vowel_shapes(mel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, 4, 80) log-mel -> frontness and rounding in [0, 1], each (T,)."""
    power = 10.0 ** (4.0 * mel.mean(axis=1) - 4.0)  # undo (x + 4) / 4 and log10: (T, 80)
    ratio_db = 10 * np.log10((power[:, _HIGH_BAND].sum(1) + 1e-10) / (power[:, _LOW_BAND].sum(1) + 1e-10))
    band = power[:, _CENTROID_BAND]
    centroid = (band * _CENTRES[_CENTROID_BAND]).sum(1) / (band.sum(1) + 1e-10)
    lo, hi = FRONT_BAND_DB
    front = np.clip((ratio_db - lo) / (hi - lo), 0, 1)
    start, end = ROUND_CENTROID_HZ
    rounded = np.clip((centroid - start) / (end - start), 0, 1) * (1 - front)
    return front, rounded


class BaselineDriver:
    """Streaming audio-to-motion for one stream; `reset` before reusing it on another."""

    def __init__(self, options: BaselineOptions = BaselineOptions()):
        self.options = options
        self.reset()

    def reset(self) -> None:
        """Start a new stream: every filter at rest, the random processes re-seeded."""
        self._rng = np.random.default_rng(self.options.seed)
        self._offset = self._target_offset()  # current emotion offset (eases toward a new one)
        self._reference_db = REFERENCE_FLOOR_DB  # running speech peak level
        self._jaw = self._front = self._round = 0.0
        self._emphasis = EmphasisTracker()
        self._blinks = BlinkProcess()
        self._head = HeadProcess()

    def set_options(self, options: BaselineOptions) -> None:
        """Live controls mid-stream: the emotion eases in over ~0.3 s, scales apply at once, the seed is kept."""
        self.options = replace(options, seed=self.options.seed)

    def _target_offset(self) -> np.ndarray:
        offsets = spec.from_dict(EMOTION_OFFSETS[self.options.emotion], base=np.zeros(spec.D, np.float32))
        return offsets * self.options.expressiveness

    def drive(self, features: AudioFeatures) -> np.ndarray:
        """Whole clip at once: a fresh stream over `features`."""
        self.reset()
        return self.step(features)

    def step(self, features: AudioFeatures) -> np.ndarray:
        """Motion for the next len(features) frames of the stream: (T, spec.D) float32 within bounds."""
        T = len(features)
        out = spec.neutral(T)
        front, rounded = _vowel_shapes(features.mel)
        gate = np.clip((features.vad - 0.2) / 0.4, 0, 1)  # speech probability -> 0..1 articulation gate
        draws, noise = frame_draws(self._rng, T)  # a fixed count per frame: chunking-independent
        target_offset = self._target_offset()
        for t in range(T):
            g = float(gate[t])
            articulation = self._mouth(float(features.energy[t]), float(features.voicing[t]), g, front[t], rounded[t])
            emphasis = self._emphasis.step(articulation, float(features.f0[t]), g)
            blink = self._blinks.step(draws[t], g)
            rotation, breath = self._head.step(noise[t], articulation, emphasis)
            self._offset += _OFFSET_A * (target_offset - self._offset)

            row = out[t]
            row += self._offset
            scale = self.options.expressiveness
            row[_JAW] += self._jaw * scale
            row[_LOWER] += 0.3 * self._jaw * scale
            row[_UPPER] += 0.15 * self._jaw * scale
            row[_FUNNEL] += 0.45 * self._round * scale
            row[_PUCKER] += 0.5 * self._round * scale
            row[_STRETCH] += 0.3 * self._front * scale
            row[_SMILE] += 0.12 * self._front * scale
            row[_BROWS] += BROW_EMPHASIS * emphasis * scale
            row[_BLINK] = blink
            row[_WIDE] *= 1.0 - blink  # a blink closes wide eyes too
            row[_HEAD_ROT] += rotation * self.options.head_motion
            row[_HEAD_Y] += BREATH_Y * breath * self.options.head_motion
        return spec.clip(out)

    def _mouth(self, energy: float, voicing: float, gate: float, front: float, rounded: float) -> float:
        """Advance jaw and vowel shapes by one frame; return articulation (loudness x gate, 0..1)."""
        # Loudness relative to a running peak level, so the mouth adapts to the recording's gain.
        self._reference_db = max(self._reference_db - REFERENCE_DECAY_DB, REFERENCE_FLOOR_DB)
        if gate > 0.5:  # only speech may raise it: a door slam between sentences should not
            self._reference_db = max(self._reference_db, energy)
        loud = min(max((energy - self._reference_db + LOUDNESS_RANGE_DB) / LOUDNESS_RANGE_DB, 0.0), 1.0)
        articulation = loud * gate
        # Squaring loudness keeps syllable nuclei open and closes the mouth between them;
        # voiceless consonants open less.
        target = JAW_PEAK * loud**2 * gate * (0.6 + 0.4 * voicing)
        self._jaw += (JAW_ATTACK if target > self._jaw else JAW_RELEASE) * (target - self._jaw)
        self._front += SHAPE_SMOOTHING * (front * voicing * articulation - self._front)
        self._round += SHAPE_SMOOTHING * (rounded * voicing * articulation - self._round)
        return articulation


def frame_draws(rng: np.random.Generator, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The random numbers for `frames` frames: blink draws (T,) uniform and head noise (T, 3) normal.

    A fixed count per frame (1 blink draw + 3 head normals) keeps a stream chunking-independent.
    """
    draws = rng.random((frames, 4))
    return draws[:, 0], ndtri(np.clip(draws[:, 1:], 1e-12, 1 - 1e-12))


class BlinkProcess:
    """Blinks as a renewal process: a minimum gap, then a constant hazard scaled by speaking / pausing."""

    def __init__(self):
        self._since_blink = int(BLINK_MIN_GAP_S * FPS)  # frames since the last blink began
        self._since_speech = 10**9  # frames since speech last stopped
        self._activity = 0.0  # smoothed speech gate
        self._speaking = False

    def step(self, draw: float, gate: float) -> float:
        """One frame: `draw` uniform in [0, 1), `gate` the speech gate in [0, 1]; returns eyeBlink."""
        # Speaking follows the smoothed gate with hysteresis, so VAD dips inside words are not pauses.
        self._activity += _ACTIVITY_A * (gate - self._activity)
        speaking = self._activity > (0.3 if self._speaking else 0.6)
        self._since_speech = 0 if (self._speaking and not speaking) else self._since_speech + 1
        self._speaking = speaking
        self._since_blink += 1
        factor = BLINK_SPEECH_FACTOR if speaking else 1.0
        if self._since_speech < BLINK_PAUSE_WINDOW_S * FPS:
            factor = BLINK_PAUSE_FACTOR
        if self._since_blink >= BLINK_MIN_GAP_S * FPS and draw < _BLINK_HAZARD * factor:
            self._since_blink = 0
        return BLINK_PROFILE[self._since_blink] if self._since_blink < len(BLINK_PROFILE) else 0.0


class HeadProcess:
    """Head rotation: low-passed noise whose amplitude follows articulation, nods on emphasis, breathing."""

    def __init__(self):
        self._frame = 0
        self._level = 0.0  # smoothed articulation: head-motion amplitude
        self._stages = np.zeros((2, 3))  # the two low-pass stages, per axis

    def step(self, noise: np.ndarray, articulation: float, emphasis: float) -> tuple[np.ndarray, float]:
        """One frame: (3,) unit normals, articulation and emphasis in [0, 1] -> yaw/pitch/roll (radians,
        before head_motion) and the breathing phase's sine (headY is BREATH_Y times it)."""
        self._level += _LEVEL_A * (articulation - self._level)
        self._stages[0] += _HEAD_A * (noise - self._stages[0])
        self._stages[1] += _HEAD_A * (self._stages[0] - self._stages[1])
        rotation = self._stages[1] * _HEAD_GAIN * (HEAD_IDLE + HEAD_SPEECH * self._level)
        breath = float(np.sin(2 * np.pi * self._frame / (BREATH_PERIOD_S * FPS)))
        rotation[1] += NOD * emphasis + BREATH_PITCH * breath
        self._frame += 1
        return rotation, breath


class EmphasisTracker:
    """Emphasis in [0, 1]: loudness or pitch jumping above its running level (raises brows, nods)."""

    def __init__(self):
        self._fast = self._slow = 0.0  # loudness EMAs
        self._f0_level = None  # running F0 in semitones, set by the first voiced frame
        self._emphasis = 0.0

    def step(self, articulation: float, f0: float, gate: float) -> float:
        """One frame: articulation (loudness x gate) and gate in [0, 1], f0 in Hz (0 = unvoiced or unknown)."""
        self._fast += _FAST_A * (articulation - self._fast)
        self._slow += _SLOW_A * (articulation - self._slow)
        pitch_jump = 0.0
        if f0 > 0 and gate > 0.5:
            semitones = 12 * np.log2(f0 / 100.0)
            self._f0_level = semitones if self._f0_level is None else self._f0_level
            pitch_jump = min(max((semitones - self._f0_level - 2.0) / 3.0, 0.0), 1.0)  # > 2 semitones up
            self._f0_level += _F0_A * (semitones - self._f0_level)
        loudness_jump = min(max((self._fast - self._slow - 0.15) / 0.25, 0.0), 1.0)
        target = max(loudness_jump, pitch_jump) * gate
        self._emphasis += (0.3 if target > self._emphasis else 0.08) * (target - self._emphasis)
        return self._emphasis
