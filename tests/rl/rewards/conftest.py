"""A short spoken clip, its motion from the engine's baseline driver, and corruptions of that motion: the
cases every reward term must rank (built once per session)."""

import numpy as np
import pytest

from engine.motion import spec

SECONDS = 3.6  # the bundled speech's first sentence with its pauses
TRANSCRIPT = "Hello! I am a photo that learned to speak."  # engine.assets.make_assets.SENTENCES[0]


@pytest.fixture(scope="session")
def clip():
    """(audio, features) of the first sentence of the bundled speech."""
    from engine import assets
    from engine.audio.frontend import extract_features
    from engine.audio.io import load_audio

    audio = load_audio(assets.SAMPLE_SPEECH)[: int(SECONDS * 16000)]
    return audio, extract_features(audio)


@pytest.fixture(scope="session")
def motions(clip):
    """name -> (T, D) raw motion: the baseline driver's ("real") and hacked or broken versions of it."""
    from engine.motion.baseline import BaselineDriver
    from train.sync_expert import shift_motion

    real = BaselineDriver().drive(clip[1])
    T = len(real)
    frozen = np.tile(real.mean(0), (T, 1))
    shaken = real.copy()
    shaken[:, spec.index("headYaw")] += 0.02 * (-1.0) ** np.arange(T)  # a 12.5 Hz tremor
    stuck = real.copy()
    stuck[:, spec.index("jawOpen")] = np.maximum(stuck[:, spec.index("jawOpen")], 0.45)
    popping = real.copy()
    popping[::7, spec.index("jawOpen")] += 0.4  # the mouth pops open for single frames
    cases = {"real": real, "shifted": shift_motion(real, 8), "frozen": frozen, "shaken": shaken,
             "stuck_open": stuck, "popping": popping}
    return {k: spec.clip(v) for k, v in cases.items()}


@pytest.fixture(scope="session")
def samples(clip, motions):
    from rl.rewards import Sample

    audio, features = clip
    return {k: Sample(audio, features, m) for k, m in motions.items()}


@pytest.fixture(scope="session")
def small_portrait():
    from engine.assets import DEFAULT_PORTRAIT
    from engine.face.analysis import analyze_portrait

    return analyze_portrait(DEFAULT_PORTRAIT, size=128)


@pytest.fixture(scope="session")
def rendered(small_portrait, motions):
    """name -> (T, 128, 128, 3) frames of the first 25 frames of 'real' and 'shaken' motion."""
    from engine.face.rig import Rig
    from engine.render.renderer import Renderer
    from train.eval_video import render

    renderer = Renderer(Rig(small_portrait)).eval()
    return {k: render(renderer, motions[k][:25]) for k in ("real", "shaken")}
