"""End to end, the way a user runs it: render the sample, then measure the video itself."""

from pathlib import Path

import numpy as np
import pytest

from engine import assets
from engine.audio.io import load_audio
from engine.face.measure import face_openings, frame_energy_db
from engine.io.video import probe, read_frames
from engine.motion import spec
from engine.motion.choice import Baseline
from engine.offline import RenderRequest, render_file
from engine.timebase import FPS, SAMPLES_PER_FRAME, frames_for_samples


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("render") / "talk.mp4"
    summary = render_file(RenderRequest(out=out, motion_out=out.with_suffix(".jsonl"), progress=False))
    return out, summary


@pytest.mark.slow
def test_mp4_has_the_right_frames_size_and_audio(rendered):
    out, summary = rendered
    samples = load_audio(assets.SAMPLE_SPEECH)
    info = probe(out)
    assert info.frames == frames_for_samples(len(samples))
    assert (info.width, info.height) == (512, 512) and info.fps == FPS
    assert abs(info.audio_duration - info.frames / FPS) <= 1 / FPS
    assert str(out) in summary and "real time" in summary
    motion = spec.load(out.with_suffix(".jsonl"))
    assert motion.shape == (info.frames, spec.D)


@pytest.mark.slow
def test_mouth_in_the_video_tracks_speech_and_closes_in_silence(rendered):
    out, _ = rendered
    opening, eyes = np.array([face_openings(f) for f in read_frames(out)]).T
    assert np.isfinite(opening).mean() > 0.95, "the face must stay detectable in every rendered frame"
    energy_db = frame_energy_db(load_audio(assets.SAMPLE_SPEECH), len(opening), SAMPLES_PER_FRAME)
    ok = np.isfinite(opening)
    r = np.corrcoef(opening[ok], energy_db[ok])[0, 1]
    assert r > 0.4, f"mouth opening should follow speech energy (Pearson r = {r:.2f})"

    silent = energy_db < energy_db.max() - 40
    quiet = np.convolve(~silent, np.ones(7), "same") == 0  # silent, and 3 frames away from any speech
    speech = energy_db > energy_db.max() - 20
    assert quiet.sum() >= 10 and speech.sum() >= 25
    assert np.nanmedian(opening[quiet]) < 0.02, "the mouth should be closed in pauses"
    assert np.nanpercentile(opening[speech], 75) > 0.06, "the mouth should visibly open on speech"
    assert np.nanmin(eyes) < 0.3 * np.nanmedian(eyes), "at least one visible blink in the clip"


def test_bad_output_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\.mp4"):
        render_file(RenderRequest(out=tmp_path / "talk.avi", progress=False))


@pytest.mark.slow
def test_full_photo_mode_pastes_the_face_back_into_the_photo(tmp_path, sample_clip, portrait):
    import cv2

    photo = cv2.copyMakeBorder(cv2.resize(portrait.frame, (700, 700)), 50, 51, 200, 201, cv2.BORDER_REFLECT)
    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    out = tmp_path / "full.mp4"
    render_file(RenderRequest(audio=sample_clip(1.0), portrait=path, out=out, size=256, full_photo=True,
                              progress=False))
    info = probe(out)
    assert (info.width, info.height) == (1102, 802)  # odd photo sizes are padded by one pixel for yuv420p
    first = next(read_frames(out))[:801, :1101].astype(int)
    assert np.abs(first[:, :150] - photo[:, :150]).mean() < 3  # far from the face: the photo itself


@pytest.mark.parametrize("where", ["under_a_file", "proc", "a_folder"])
def test_unwritable_outputs_fail_before_any_compute(tmp_path, where):
    """`--out FILE/x.mp4` or a path under /proc ended in a raw traceback, after the whole motion pass."""
    import time

    from engine.errors import UserError

    (tmp_path / "FILE").write_text("a file")
    (tmp_path / "dir.mp4").mkdir()
    out = {"under_a_file": tmp_path / "FILE" / "x.mp4", "proc": "/proc/avatar/x.mp4", "a_folder": tmp_path / "dir.mp4"}
    started = time.monotonic()
    with pytest.raises(UserError, match="cannot write --out .*pick a path"):
        render_file(RenderRequest(out=Path(out[where]), progress=False))
    assert time.monotonic() - started < 1.0  # nothing was loaded or computed
    with pytest.raises(UserError, match="cannot write --motion-out"):
        render_file(RenderRequest(out=tmp_path / "ok.mp4", motion_out=tmp_path / "FILE" / "m.jsonl", progress=False))


@pytest.mark.slow
def test_full_photo_output_is_bounded_in_size(tmp_path, sample_clip, portrait):
    """An 8000 x 8000 photo made an 8000 x 8000 H.264 (4.5 GB for 3 frames)."""
    import cv2

    from engine.offline import MAX_FULL_PHOTO_SIDE

    path = tmp_path / "huge.png"
    cv2.imwrite(str(path), cv2.cvtColor(cv2.resize(portrait.frame, (2400, 2400)), cv2.COLOR_RGB2BGR))
    summary = render_file(RenderRequest(audio=sample_clip(0.3), portrait=path, out=tmp_path / "full.mp4", size=128,
                                        full_photo=True, driver=Baseline(), progress=False))
    info = probe(tmp_path / "full.mp4")
    assert (info.width, info.height) == (MAX_FULL_PHOTO_SIDE, MAX_FULL_PHOTO_SIDE) and "scaled down" in summary
