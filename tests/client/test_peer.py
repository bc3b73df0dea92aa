"""The client's measurements on known inputs: the echo lag, the A/V offset and its drift."""

import numpy as np
import pytest

from client.peer import RECEIVE_SKEW_S, ClientReport, _echo_lag, _measure
from engine import assets
from engine.audio.io import load_audio


@pytest.mark.parametrize("lag", [0.15, 0.43, 1.2])
def test_echo_lag_finds_the_delay_of_returned_speech(lag):
    sent = load_audio(assets.SAMPLE_SPEECH)
    returned = np.repeat(np.concatenate([np.zeros(int((lag - 0.1) * 16000), np.float32), sent]), 3)  # at 48 kHz
    assert _echo_lag(sent, 16000, 10.0, returned, 48000, 10.1) == pytest.approx(lag, abs=0.011)


def test_echo_lag_of_silence_is_unknown():
    assert _echo_lag(np.zeros(16000 * 3), 16000, 0.0, np.zeros(48000 * 3), 48000, 0.2) is None


@pytest.mark.parametrize("skew, drift", [(0.0, 0.0), (0.12, 0.0), (0.0, 0.08)])
def test_av_offset_and_drift(skew, drift):
    """Video frames every 40 ms, audio every 20 ms with the same media times: video arriving `skew`
    late (and `drift` more by the end) is what the report says, after the receive-buffer correction."""
    n = 250
    video = [(k * 3600, 1.0 + k * 0.04 + skew + drift * k / n) for k in range(n)]
    audio = [(k * 960, 1.0 + k * 0.02 + RECEIVE_SKEW_S, np.zeros(960, np.float32)) for k in range(2 * n)]
    report = ClientReport()
    _measure(report, video, audio, None)
    assert report.frames == n and report.fps == pytest.approx(25, rel=0.05)
    assert report.av_offset_s == pytest.approx(skew + drift / 2, abs=0.012)
    assert report.av_offset_drift_s == pytest.approx(drift * 0.75, abs=0.012)
