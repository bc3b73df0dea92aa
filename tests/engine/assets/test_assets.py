"""The bundled assets are there, as the manifest describes them, and the speech has real pauses."""

import json
import shutil
import subprocess
import wave

import cv2
import numpy as np
import pytest

from engine import assets
from engine.assets.make_assets import VOICE, make_assets
from engine.io import sha256_file
from engine.timebase import SAMPLE_RATE


def speech_samples(path):
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (SAMPLE_RATE, 1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768


def test_portrait_is_a_512_square_rgb_image():
    image = cv2.imread(str(assets.require(assets.DEFAULT_PORTRAIT)), cv2.IMREAD_UNCHANGED)
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8


def test_speech_length_and_level():
    samples = speech_samples(assets.require(assets.SAMPLE_SPEECH))
    assert 8 <= len(samples) / SAMPLE_RATE <= 10
    peak_db = 20 * np.log10(np.abs(samples).max())
    assert -3.5 < peak_db < -2.5


def test_speech_pauses_between_sentences():
    """Sliding 200 ms RMS falls to ~0 inside the clip at least twice: the mouth has time to close."""
    samples = speech_samples(assets.SAMPLE_SPEECH)
    window = SAMPLE_RATE // 5
    rms = np.sqrt(np.convolve(samples**2, np.ones(window) / window, "valid"))
    silent = rms < 1e-3
    speech = np.flatnonzero(~silent)
    inside = silent[speech[0] : speech[-1]]  # between the first and last speech, not the edges
    pauses = np.count_nonzero(np.diff(inside.astype(int)) == 1)
    assert pauses >= 2 and rms.max() > 0.05


def test_files_match_the_manifest():
    manifest = json.loads(assets.require(assets.MANIFEST).read_text())
    for name in ("portrait.png", "speech.wav"):
        assert sha256_file(assets.ASSETS_DIR / name) == manifest[name]["sha256"], (
            f"{name} differs from manifest.json; regenerate with `python -m engine.assets.make_assets`")


def test_shipped_weights_match_weights_json_and_record_how_they_were_made():
    manifest = json.loads((assets.ASSETS_DIR / "weights.json").read_text())
    for name, entry in manifest.items():
        path = assets.ASSETS_DIR / entry["file"]
        assert sha256_file(path) == entry["sha256"], f"{path.name} differs from weights.json; ship it with train.ship"
        assert path.stat().st_size < 30e6 and entry["commands"] and entry["corpus"]["command"]
        assert entry["provenance"]["steps"] > 0, name


def test_missing_asset_error_says_how_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="make_assets"):
        assets.require(tmp_path / "portrait.png")


def festival_voices():
    return subprocess.run(["festival", "-b", "(print (voice.list))"], capture_output=True, text=True).stdout


@pytest.mark.slow
def test_regenerating_gives_the_same_bytes(tmp_path):
    if shutil.which("text2wave") is None or VOICE not in festival_voices():
        pytest.skip(f"needs festival with the {VOICE} voice (Debian: apt-get install festival festvox-us-slt-hts)")
    manifest = make_assets(tmp_path)
    assert manifest == json.loads(assets.MANIFEST.read_text())
    for name in ("portrait.png", "speech.wav", "manifest.json"):
        assert sha256_file(tmp_path / name) == sha256_file(assets.ASSETS_DIR / name), name
