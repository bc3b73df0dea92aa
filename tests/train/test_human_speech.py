import json

import pytest

from engine.audio.io import load_audio
from train import human_speech


@pytest.mark.slow
def test_gather_writes_recordings_with_transcripts(tmp_path):
    """Real recordings: the alsa prompts (when alsa-utils is installed) and pocketsphinx's test audio from PyPI."""
    rows = human_speech.gather(tmp_path)
    names = {r["file"] for r in rows}
    assert {"pocketsphinx_goforward.wav", "pocketsphinx_cards_005.wav"} <= names
    assert not any("librivox" in n for n in names)  # kept unseen for held-out checks
    for row in rows:
        audio = load_audio(tmp_path / row["file"])
        assert 0.5 < len(audio) / 16000 < 30 and abs(audio).max() > 0.05
        assert (tmp_path / row["file"]).with_suffix(".txt").read_text().strip() == row["transcript"]
    assert (tmp_path / "pocketsphinx_cards_005.txt").read_text().strip() == "eight of spades four of clubs seven of hearts"
    assert json.loads((tmp_path / "sources.json").read_text()) == rows
