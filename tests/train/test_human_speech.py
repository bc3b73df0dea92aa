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


@pytest.mark.slow
def test_held_out_gathers_only_the_librivox_excerpts(tmp_path):
    rows = human_speech.gather(tmp_path, held_out=True)
    assert len(rows) == 5 and all("librivox" in r["file"] for r in rows)
    assert (tmp_path / "pocketsphinx_librivox_sense_and_sensibility_01_austen_64kb-0880.txt").read_text().strip() == \
        "he was not an ill disposed young man"
