"""MP4 writing and reading: counts, quality, and audio/video alignment measured on the decoded file."""

import numpy as np
import pytest

import engine.io.video as video
from engine.errors import UserError
from engine.io.video import Mp4Writer, probe, read_audio, read_frames
from engine.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME


def smooth_image(width=96, height=64):
    """Gentle gradients and low-frequency waves: what a good encoder keeps nearly exactly."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = [0.5 + 0.4 * np.sin(2 * np.pi * (x + k * y) + k) for k in range(3)]
    return (np.stack(channels, axis=-1) * 255).astype(np.uint8)


def speechlike(n, rng):
    """Amplitude-modulated harmonics plus a little noise, peak ~0.5."""
    t = np.arange(n) / SAMPLE_RATE
    voice = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (0.2 * envelope * voice + 0.01 * rng.standard_normal(n)).astype(np.float32)


def write(path, frames, audio=None):
    height, width = frames[0].shape[:2]
    with Mp4Writer(path, size=(width, height), audio=audio) as writer:
        for frame in frames:
            writer.write(frame)
    return writer


@pytest.mark.parametrize("frames, audio_samples", [
    (1, 200),  # shorter than one frame: padded with silence
    (13, 13 * SAMPLES_PER_FRAME + 321),  # longer than the video, not whole frames: trimmed
    (40, 31 * SAMPLES_PER_FRAME + 17),  # a quarter short: padded
])
def test_counts_rate_size_codec_and_audio_length(tmp_path, rng, frames, audio_samples):
    writer = write(tmp_path / "t.mp4", [smooth_image()] * frames, speechlike(audio_samples, rng))
    info = probe(tmp_path / "t.mp4")
    assert writer.codec == "libx264" and info.codec == "h264"
    assert (info.frames, info.fps, info.width, info.height) == (frames, FPS, 96, 64)
    assert info.audio_rate == SAMPLE_RATE
    assert abs(info.audio_duration - frames / FPS) <= 1 / FPS
    assert len(read_audio(tmp_path / "t.mp4")) == frames * SAMPLES_PER_FRAME, "audio should end with the last frame"


def test_frames_decode_close_to_what_was_written(tmp_path):
    image = smooth_image()
    write(tmp_path / "t.mp4", [image] * 5)
    for decoded in read_frames(tmp_path / "t.mp4"):
        mse = np.mean((decoded.astype(np.float64) - image) ** 2)
        assert 10 * np.log10(255**2 / mse) > 30


def test_audio_roundtrip(tmp_path, rng):
    audio = speechlike(25 * SAMPLES_PER_FRAME, rng)
    write(tmp_path / "t.mp4", [smooth_image()] * 25, audio)
    decoded = read_audio(tmp_path / "t.mp4")
    assert decoded.dtype == np.float32 and decoded.shape == audio.shape
    assert np.corrcoef(audio, decoded)[0, 1] > 0.98


def test_a_flash_and_a_click_stay_on_the_same_frame(tmp_path):
    """Encoder priming (1024 samples for AAC) must not shift the sound against the picture."""
    flashes = [3, 17, 38]
    audio = np.zeros(45 * SAMPLES_PER_FRAME, np.float32)
    frames = [np.full((64, 64, 3), 30, np.uint8) for _ in range(45)]
    for n in flashes:
        audio[n * SAMPLES_PER_FRAME + SAMPLES_PER_FRAME // 2] = 0.9  # mid-frame: any shift over half a frame shows
        frames[n] = np.full((64, 64, 3), 230, np.uint8)
    write(tmp_path / "t.mp4", frames, audio)

    brightness = np.array([frame.mean() for frame in read_frames(tmp_path / "t.mp4")])
    seen_flashes = np.flatnonzero(brightness > 130)
    decoded = np.abs(read_audio(tmp_path / "t.mp4"))
    clicks = [int(np.argmax(decoded[(n - 1) * SAMPLES_PER_FRAME : (n + 2) * SAMPLES_PER_FRAME])) + (n - 1) * SAMPLES_PER_FRAME
              for n in flashes]
    assert list(seen_flashes) == flashes
    assert [c // SAMPLES_PER_FRAME for c in clicks] == flashes
    assert all(abs(c - (n * SAMPLES_PER_FRAME + SAMPLES_PER_FRAME // 2)) < 64 for c, n in zip(clicks, flashes))


def test_audio_pushed_in_pieces_equals_audio_given_at_once(tmp_path, rng):
    audio = speechlike(20 * SAMPLES_PER_FRAME, rng)
    frames = [smooth_image()] * 20
    write(tmp_path / "whole.mp4", frames, audio)
    with Mp4Writer(tmp_path / "pieces.mp4", size=(96, 64), audio=np.zeros(0, np.float32)) as writer:
        pieces = np.array_split(audio, 37)  # uneven, unrelated to frames or AAC blocks
        for i, frame in enumerate(frames):
            writer.write(frame)
            for piece in pieces[i * 37 // 20 : (i + 1) * 37 // 20]:
                writer.write_audio(piece)
    np.testing.assert_array_equal(read_audio(tmp_path / "pieces.mp4"), read_audio(tmp_path / "whole.mp4"))


def test_no_audio_track(tmp_path):
    writer = write(tmp_path / "t.mp4", [smooth_image()] * 3)
    info = probe(tmp_path / "t.mp4")
    assert info.frames == 3 and info.audio_rate is None and info.audio_duration == 0.0
    with pytest.raises(ValueError, match="opened without audio"):
        writer.write_audio(np.zeros(10, np.float32))
    with pytest.raises(UserError, match="no audio track"):
        read_audio(tmp_path / "t.mp4")


def test_odd_sizes_are_padded_to_even(tmp_path):
    image = smooth_image(95, 63)
    writer = write(tmp_path / "t.mp4", [image] * 2)
    assert writer.size == (96, 64)
    decoded = next(read_frames(tmp_path / "t.mp4"))
    assert decoded.shape == (64, 96, 3)
    mse = np.mean((decoded[:63, :95].astype(np.float64) - image) ** 2)
    assert 10 * np.log10(255**2 / mse) > 30


def test_falls_back_to_mpeg4_without_h264(tmp_path, monkeypatch):
    monkeypatch.setattr(video, "VIDEO_ENCODERS", (("no-such-encoder", {}), video.VIDEO_ENCODERS[-1]))
    writer = write(tmp_path / "t.mp4", [smooth_image()] * 4)
    assert writer.codec == "mpeg4" and probe(tmp_path / "t.mp4").codec == "mpeg4"


def test_clear_errors(tmp_path):
    with pytest.raises(UserError, match="missing"):
        Mp4Writer(tmp_path / "missing" / "t.mp4", size=(64, 64))
    with Mp4Writer(tmp_path / "t.mp4", size=(64, 64)) as writer:
        with pytest.raises(ValueError, match=r"\(64, 64, 3\) uint8"):
            writer.write(np.zeros((64, 64), np.uint8))
        writer.write(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="mono float"):
        Mp4Writer(tmp_path / "s.mp4", size=(64, 64), audio=np.zeros((10, 2), np.float32))
    with pytest.raises(UserError, match="nothing.mp4"):
        probe(tmp_path / "nothing.mp4")
