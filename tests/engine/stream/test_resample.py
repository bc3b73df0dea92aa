import numpy as np
import pytest

from engine.audio.io import AudioInputError, to_mono_16k
from engine.stream.resample import StreamResampler


def blocks(x, rng, most=2000):
    """x cut at random points into blocks of 1 to `most` samples."""
    cuts = np.cumsum(rng.integers(1, most, size=len(x)))
    return np.split(x, cuts[cuts < len(x)])


@pytest.mark.parametrize("rate", [48000, 44100, 22050, 8000, 16000])
def test_any_blocking_gives_the_whole_buffer_resampling(rate):
    rng = np.random.default_rng(rate)
    x = (0.3 * rng.standard_normal(rate + 777)).astype(np.float32)
    resampler = StreamResampler(rate)
    out = np.concatenate([resampler.push(b) for b in blocks(x, rng)] + [resampler.flush()])
    np.testing.assert_allclose(out, to_mono_16k(x, rate), atol=1e-6)


def test_single_samples_and_a_reused_resampler():
    rng = np.random.default_rng(1)
    x = (0.3 * rng.standard_normal(4801)).astype(np.float32)
    resampler = StreamResampler(48000)
    for _ in range(2):  # flush() resets: the second stream comes out like the first
        out = np.concatenate([resampler.push(x[i : i + 1]) for i in range(len(x))] + [resampler.flush()])
        np.testing.assert_allclose(out, to_mono_16k(x, 48000), atol=1e-6)


def test_stereo_int16_is_scaled_and_downmixed_like_a_whole_file():
    rng = np.random.default_rng(2)
    pcm = rng.integers(-20000, 20000, size=(9600, 2)).astype(np.int16)
    resampler = StreamResampler(48000)
    out = np.concatenate([resampler.push(b) for b in blocks(pcm, rng, 1000)] + [resampler.flush()])
    np.testing.assert_allclose(out, to_mono_16k(pcm, 48000), atol=1e-6)


def test_output_keeps_pace_with_input():
    """A 20 ms block at 48 kHz gives ~20 ms at 16 kHz at once: the delay is about half the filter."""
    resampler = StreamResampler(48000)
    total = sum(len(resampler.push(np.zeros(960, np.float32))) for _ in range(50))
    assert 16000 - 16 <= total <= 16000  # 1 s in, all but ~1 ms out


def test_a_bad_rate_says_what_to_pass():
    with pytest.raises(AudioInputError, match="positive integer"):
        StreamResampler(0)
