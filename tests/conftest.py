"""Shared fixtures, each built once per test session: an analysed portrait and rig (analysis takes ~0.4 s),
a tiny generator checkpoint and a tiny synthetic corpus."""

import numpy as np
import pytest


@pytest.fixture(scope="session")
def portrait():
    from engine.assets import DEFAULT_PORTRAIT
    from engine.face.analysis import analyze_portrait

    return analyze_portrait(DEFAULT_PORTRAIT, size=512)


@pytest.fixture(scope="session")
def rig(portrait):
    from engine.face.rig import Rig

    return Rig(portrait)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def sample_clip(tmp_path):
    """sample_clip(seconds, rate=16000, channels=1) -> path of a WAV cut from the bundled speech,
    resampled and duplicated across channels, so tests can feed the pipeline odd formats."""
    import wave

    from engine import assets
    from engine.audio.io import load_audio

    def make(seconds: float, rate: int = 16000, channels: int = 1):
        speech = load_audio(assets.SAMPLE_SPEECH)[: int(seconds * 16000)]
        t = np.arange(int(len(speech) * rate / 16000)) * 16000 / rate
        pcm = (np.interp(t, np.arange(len(speech)), speech) * 32767).astype(np.int16)
        path = tmp_path / f"clip_{rate}_{channels}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(channels)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(np.repeat(pcm, channels).tobytes())
        return path

    return make


@pytest.fixture
def pulse_source(tmp_path):
    """A private PulseAudio server whose default source is a virtual microphone; yields its Feeder:
    feed(samples, rate=16000) is then heard, in real time, by sounddevice's default input (see tests/pulse.py).
    Skips where pulseaudio, pactl or PortAudio are missing."""
    from tests import pulse

    if reason := pulse.missing():
        pytest.skip(reason)
    with pulse.PulseServer(tmp_path / "pulse") as feeder:
        yield feeder


@pytest.fixture(scope="session")
def tiny_motion(tmp_path_factory):
    """A MotionConfig.tiny() generator checkpoint (seeded, as initialised), as `avatar train motion` writes one."""
    import torch

    from engine.io.checkpoint import save_checkpoint
    from engine.motion.baseline import EMOTIONS
    from engine.motion.model import MotionConfig, MotionTransformer

    torch.manual_seed(0)
    config = MotionConfig.tiny()
    path = tmp_path_factory.getbasetemp() / "tiny.safetensors"
    return save_checkpoint(path, MotionTransformer(config), config, emotions=list(EMOTIONS))


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    """30 s of synthetic speech (train and val voices); tests that need it skip where no TTS engine is installed."""
    import warnings

    from train.synth import corpus as synth
    from train.synth import tts

    if not tts.available_voices():
        pytest.skip("no TTS engine installed (apt-get install flite)")
    out = tmp_path_factory.getbasetemp() / "motion_corpus"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # engines missing here
        synth.synth_corpus(out, hours=30 / 3600, seed=0, progress=False)
    return out
