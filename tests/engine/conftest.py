"""Speech synthesized at test time (espeak-ng), shared by the audio and motion tests."""

import shutil
import subprocess

import numpy as np
import pytest


@pytest.fixture(scope="session")
def speak(tmp_path_factory):
    """speak(text, voice="en-us") -> (n,) float32 samples at SAMPLE_RATE; skips without espeak-ng."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (Debian: apt-get install espeak-ng); needed to synthesize test speech")
    from engine.audio.io import load_audio

    cache: dict[tuple[str, str], np.ndarray] = {}

    def synthesize(text: str, voice: str = "en-us") -> np.ndarray:
        if (text, voice) not in cache:
            path = tmp_path_factory.mktemp("speech") / "speech.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True)
            cache[text, voice] = load_audio(path)
        return cache[text, voice]

    return synthesize
