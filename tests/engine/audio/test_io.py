import av
import numpy as np
import pytest
from scipy.io import wavfile

from engine.audio.io import AudioInputError, load_audio, to_mono_16k
from engine.timebase import SAMPLE_RATE


def tone(freq, rate, seconds, channels=1):
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.stack([wave] * channels, axis=1).astype(np.float32)  # (n, channels)


def peak_hz(samples):
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return np.argmax(spectrum) * SAMPLE_RATE / len(samples)


def encode(path, codec, rate, samples):
    """Write (n, channels) float samples with PyAV's encoder `codec` (the file type follows the suffix)."""
    layout = "stereo" if samples.shape[1] == 2 else "mono"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        fmt = stream.codec_context.codec.audio_formats[0].name
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout=layout)  # interleaved
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=fmt, layout=layout, rate=rate)
        for f in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(f):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


@pytest.mark.parametrize(
    "suffix, codec, rate, channels",
    [(".flac", "flac", 44100, 2), (".mp3", "libmp3lame", 22050, 1), (".ogg", "libopus", 48000, 2)],
)
def test_load_compressed_files_resamples_and_downmixes(tmp_path, suffix, codec, rate, channels):
    path = tmp_path / f"tone{suffix}"
    encode(path, codec, rate, tone(440, rate, 1.0, channels))
    samples = load_audio(path)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - SAMPLE_RATE) < 0.1 * SAMPLE_RATE  # codecs add a little priming/padding
    assert abs(peak_hz(samples) - 440) < 3
    assert 0.3 < np.abs(samples).max() < 0.7


def test_load_wav_int16_stereo(tmp_path):
    path = tmp_path / "tone.wav"
    wavfile.write(path, 48000, (tone(300, 48000, 0.5, 2) * 32767).astype(np.int16))
    samples = load_audio(path)
    assert len(samples) == SAMPLE_RATE // 2
    assert abs(peak_hz(samples) - 300) < 3
    assert abs(np.abs(samples[1000:-1000]).max() - 0.5) < 0.01


def test_missing_file_error_names_the_file(tmp_path):
    with pytest.raises(AudioInputError, match="nope.wav does not exist"):
        load_audio(tmp_path / "nope.wav")


def test_not_audio_error_says_how_to_fix(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio")
    with pytest.raises(AudioInputError, match="notes.wav.*ffmpeg"):
        load_audio(path)


def test_video_without_audio_error(tmp_path):
    path = tmp_path / "silent.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for _ in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with pytest.raises(AudioInputError, match="silent.mp4 has no audio stream"):
        load_audio(path)


def test_empty_audio_error(tmp_path):
    path = tmp_path / "empty.wav"
    wavfile.write(path, SAMPLE_RATE, np.zeros(0, np.int16))
    with pytest.raises(AudioInputError, match="empty.wav contains no audio"):
        load_audio(path)


def test_to_mono_16k_from_int16_stereo_48k():
    pcm = (tone(500, 48000, 0.5, 2) * 32767).astype(np.int16)
    pcm[:, 1] = 0  # a silent right channel halves the downmix
    mono = to_mono_16k(pcm, 48000)
    assert mono.dtype == np.float32 and mono.shape == (SAMPLE_RATE // 2,)
    assert abs(np.abs(mono[500:-500]).max() - 0.25) < 0.01
    assert abs(peak_hz(mono) - 500) < 3


def test_to_mono_16k_passes_16k_mono_through():
    x = tone(200, SAMPLE_RATE, 0.1)[:, 0]
    np.testing.assert_array_equal(to_mono_16k(x, SAMPLE_RATE), x)


def test_to_mono_16k_rejects_bad_shape():
    with pytest.raises(AudioInputError, match=r"\(n,\) or \(n, channels\)"):
        to_mono_16k(np.zeros((2, 3, 4)), SAMPLE_RATE)
