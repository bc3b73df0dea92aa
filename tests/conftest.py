"""Shared fixtures: one analysed portrait and rig per test session (analysis takes ~0.4 s)."""

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
