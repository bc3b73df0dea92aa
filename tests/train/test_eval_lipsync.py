from pathlib import Path

import numpy as np
import pytest

from engine.audio.io import load_audio
from engine.errors import UserError
from engine.motion import spec
from train import eval_lipsync as ev
from train.synth.phones import SIL

ALSA = Path("/usr/share/sounds/alsa")
needs_alsa = pytest.mark.skipif(not (ALSA / "Front_Center.wav").is_file(), reason="apt-get install alsa-utils")


def test_lagged_r_finds_a_known_shift():
    rng = np.random.default_rng(0)
    reference = np.convolve(rng.standard_normal(300), np.ones(5) / 5, mode="same")
    late = np.concatenate([np.zeros(2), reference[:-2]])  # the mouth trails the sound by 2 frames
    r0, lag, best = ev.lagged_r(late, reference)
    assert lag == 2 and best > 0.99 and r0 < best
    assert ev.lagged_r(reference, late)[1] == -2
    r0, lag, _ = ev.lagged_r(np.zeros(300), reference)  # a still mouth has no correlation, not a crash
    assert np.isnan(r0) and lag == 0


@needs_alsa
def test_alignment_places_the_words_of_a_human_recording():
    samples = load_audio(ALSA / "Front_Center.wav")
    phones = ev.align(samples, "Front, center!")
    names = [p.arpabet for p in phones if p.arpabet != SIL]
    assert names == ["F", "R", "AH", "N", "T", "S", "EH", "N", "T", "ER"]
    assert phones[0].start_s == 0 and abs(phones[-1].end_s - len(samples) / 16000) < 0.02
    assert all(a.end_s == b.start_s for a, b in zip(phones, phones[1:]))
    reference = ev.reference_jaw(phones, 36)
    vowel = next(p for p in phones if p.arpabet == "AH")
    assert reference[int((vowel.start_s + vowel.end_s) / 2 * 25)] > reference[0] + 0.1  # open on the vowel


@needs_alsa
def test_alignment_failures_are_typed():
    samples = load_audio(ALSA / "Front_Center.wav")
    with pytest.raises(ev.AlignmentError, match="dictionary"):
        ev.align(samples, "front qqzzv")
    with pytest.raises(ev.AlignmentError):
        ev.align(samples, "the quick brown fox jumps over the lazy dog again and again and again")


@needs_alsa
def test_evaluate_human_scores_each_driver_and_writes_a_report(tmp_path):
    (tmp_path / "front.wav").write_bytes((ALSA / "Front_Center.wav").read_bytes())
    (tmp_path / "front.txt").write_text("front center\n")
    (tmp_path / "untranscribed.wav").write_bytes((ALSA / "Rear_Left.wav").read_bytes())
    jaw = spec.index("jawOpen")

    def echo(features):  # a "driver" whose jaw is the reference itself, one frame late
        motion = spec.neutral(len(features))
        phones = ev.align(load_audio(tmp_path / "front.wav"), "front center")
        motion[1:, jaw] = ev.reference_jaw(phones, len(features))[:-1]
        return motion

    baseline = ev.make_drivers("baseline", None, 0)["baseline"]
    scores = ev.evaluate_human(tmp_path, {"echo": echo, "baseline": baseline})
    assert [(s.recording, s.driver) for s in scores] == [("front", "echo"), ("front", "baseline")]
    assert scores[0].lag_ms == 40 and scores[0].best_r > 0.99
    assert 0.2 < scores[1].r < 1  # the baseline's loudness-driven jaw follows the phones loosely
    table = ev.markdown("t", scores)
    assert "| echo | 1 |" in table and "| front | baseline |" in table


@needs_alsa
@pytest.mark.slow
def test_rendered_scores_read_both_the_mouth_and_the_reference_through_facemesh(tmp_path):
    """`avatar eval lipsync --rendered` end to end. Against the reference rendered and read alike, a jaw that is the
    phone reference itself (scaled) scores exactly 1 whatever FaceMesh's noise, and one that pops every other
    frame scores well above it."""
    import json

    from engine import assets
    from engine.face.analysis import analyze_portrait
    from engine.face.rig import Rig
    from engine.render.renderer import Renderer
    from train import eval_video

    audio = tmp_path / "human"
    audio.mkdir()
    (audio / "front.wav").write_bytes((ALSA / "Front_Center.wav").read_bytes())
    (audio / "front.txt").write_text("front center\n")
    jaw = spec.index("jawOpen")
    phones = ev.align(load_audio(audio / "front.wav"), "front center")

    def exact(features):
        motion = spec.neutral(len(features))
        motion[:, jaw] = 0.05 + 0.5 * eval_video.reference_opening(phones, len(features))
        return motion

    def popping(features):
        motion = exact(features)
        motion[1::2, jaw] += 0.1
        return motion

    renderer = Renderer(Rig(analyze_portrait(assets.DEFAULT_PORTRAIT, size=256))).eval()
    smooth, rough = eval_video.evaluate_rendered(ev.aligned_recordings(audio), {"exact": exact, "popping": popping},
                                                 renderer)
    assert smooth.roughness_rendered == pytest.approx(1.0) and rough.roughness_rendered > 1.5, (smooth, rough)

    assert ev.main(["--audio-dir", str(audio), "--driver", "baseline", "--rendered", "--size", "256",
                    "--out", str(tmp_path / "eval")]) == 0
    [section] = json.loads((tmp_path / "eval.json").read_text())["sections"].values()
    assert np.isfinite(section["scores"][0]["roughness_rendered"]) and "rendered reference" in \
        (tmp_path / "eval.md").read_text()


def test_missing_or_empty_audio_dir_says_how_to_gather_one(tmp_path):
    with pytest.raises(UserError, match="avatar data human"):
        ev.recordings(tmp_path / "nowhere")
    with pytest.raises(UserError, match="avatar data human"):
        ev.recordings(tmp_path)
