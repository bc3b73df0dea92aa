import numpy as np
import pytest
import torch

from engine.audio.mel import LOG_FLOOR, MEL_LOOKAHEAD, StreamingLogMel, log_mel, mel_center_frequencies, mel_filters
from engine.timebase import MEL_HOP, N_FFT, N_MELS, SAMPLE_RATE


@pytest.fixture(scope="module")
def signal():
    rng = np.random.default_rng(0)
    t = np.arange(int(1.3 * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def stream(x, sizes):
    mel, out, i = StreamingLogMel(), [], 0
    for size in sizes:
        out.append(mel.push(x[i : i + size]))
        i += size
    out += [mel.push(x[i:]), mel.flush()]
    return np.concatenate(out)


@pytest.mark.parametrize("block", [1, 7, 160, 320, 1000, 10**6])
def test_any_block_size_gives_the_offline_features(signal, block):
    whole = log_mel(signal)
    assert whole.shape == (-(-len(signal) // MEL_HOP), N_MELS)
    np.testing.assert_allclose(stream(signal, [block] * (len(signal) // block)), whole, atol=1e-6)


def test_random_block_sizes(signal, rng):
    np.testing.assert_allclose(stream(signal, rng.integers(0, 900, 60)), log_mel(signal), atol=1e-6)


def test_matches_torch_stft_reference(signal):
    # Whisper's recipe with torch.stft (periodic Hann, |X|^2), on our zero-padded framing.
    padded = torch.from_numpy(np.pad(signal, N_FFT // 2))
    spec = torch.stft(padded, N_FFT, MEL_HOP, window=torch.hann_window(N_FFT), center=False, return_complex=True)
    ref = (torch.from_numpy(mel_filters()) @ spec.abs() ** 2).clamp(min=1e-10).log10()
    ref = ((ref.clamp(min=LOG_FLOOR) + 4) / 4).T.numpy()
    # float32 power spectra and filterbank sums round differently by CPU: 1.4e-5 seen on an Intel Xeon
    np.testing.assert_allclose(log_mel(signal), ref[: -(-len(signal) // MEL_HOP)], atol=5e-5)


def test_frames_never_see_beyond_their_lookahead(signal):
    cut = 5000
    changed = signal.copy()
    changed[cut:] = 0.9
    a, b = log_mel(signal), log_mel(changed)
    complete = (cut - 1 - MEL_LOOKAHEAD) // MEL_HOP + 1  # frames whose windows end before `cut`
    np.testing.assert_array_equal(a[:complete], b[:complete])
    assert np.abs(a[complete] - b[complete]).max() > 0.01


def test_filterbank_is_slaney():
    filters = mel_filters()
    assert filters.shape == (N_MELS, N_FFT // 2 + 1)
    centres = mel_center_frequencies()
    np.testing.assert_allclose(np.diff(centres[:14]), np.diff(centres[:14]).mean(), rtol=1e-6)  # linear below 1 kHz
    ratios = centres[40:][1:] / centres[40:][:-1]
    np.testing.assert_allclose(ratios, ratios.mean(), rtol=1e-6)  # logarithmic above
    df = SAMPLE_RATE / N_FFT
    area = filters.sum(axis=1) * df  # equal-area triangles, up to sampling the triangles on 40 Hz bins
    assert abs(area.mean() - 1) < 0.01 and np.abs(area - 1).max() < 0.1


def test_tone_lights_its_bin_and_silence_sits_at_the_floor():
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    mel = log_mel((0.5 * np.sin(2 * np.pi * 1500 * t)).astype(np.float32))
    assert np.argmax(mel[50]) == np.argmin(np.abs(mel_center_frequencies() - 1500))
    np.testing.assert_array_equal(log_mel(np.zeros(3200, np.float32)), (LOG_FLOOR + 4) / 4)
