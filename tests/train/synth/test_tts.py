"""Every installed TTS engine: audio with phone timings that cover it, and working rate/pitch."""

from functools import cache

import numpy as np
import pytest

from engine.timebase import SAMPLE_RATE
from train.synth import tts
from train.synth.phones import ARPABET, SIL, VOWELS

# Quotes, a backslash and Scheme/shell syntax: the text must reach every engine as plain text.
SENTENCE = 'The birch canoe slid on "smooth" planks; (a \\ b) is fine.'


@cache
def _adapter(voice: str) -> tts.TTSAdapter:  # piper takes ~1 s to load: once per test session
    return tts.make_adapter(voice)


def _voices_or_skip(engine: str) -> tuple[str, ...]:
    try:
        return tts.engine_voices(engine)
    except tts.TTSEngineMissing as e:
        pytest.skip(str(e))


def _median_f0(samples: np.ndarray) -> float:
    """Median autocorrelation pitch over clearly voiced 40 ms windows (enough to compare two renditions)."""
    loud, f0 = 0.05 * np.abs(samples).max(), []
    lo, hi = SAMPLE_RATE // 400, SAMPLE_RATE // 60
    for i in range(0, len(samples) - 640, 320):
        w = samples[i : i + 640] - samples[i : i + 640].mean()
        if np.abs(w).mean() < loud:
            continue
        ac = np.correlate(w, w, "full")[639:]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.5 * ac[0]:
            f0.append(SAMPLE_RATE / lag)
    return float(np.median(f0))


@pytest.mark.parametrize("engine", list(tts.ADAPTERS))
def test_each_voice_speaks_with_phones_covering_the_audio(engine):
    for voice in _voices_or_skip(engine):
        utt = _adapter(f"{engine}:{voice}").speak(SENTENCE)
        assert utt.samples.dtype == np.float32 and utt.samples.ndim == 1
        assert 1.0 < utt.duration_s < 8.0 and np.abs(utt.samples).max() > 0.05
        starts = np.array([p.start_s for p in utt.phones])
        ends = np.array([p.end_s for p in utt.phones])
        assert starts[0] == 0 and np.all(ends > starts), voice
        assert np.allclose(starts[1:], ends[:-1], atol=1e-6), f"{voice}: phones must be contiguous"
        assert abs(ends[-1] - utt.duration_s) < 0.15, f"{voice}: phones end at {ends[-1]:.3f} s of {utt.duration_s:.3f}"
        names = {p.arpabet for p in utt.phones}
        assert names <= ARPABET and len(names & VOWELS) >= 4 and {"P", "B", "K"} <= names, f"{voice}: {names}"
        speech = sum(p.duration_s for p in utt.phones if p.arpabet != SIL)
        assert speech > 0.5 * utt.duration_s


@pytest.mark.parametrize("engine", list(tts.ADAPTERS))
def test_rate_and_pitch_work(engine):
    adapter = _adapter(f"{engine}:{_voices_or_skip(engine)[0]}")
    fast, slow = adapter.speak(SENTENCE, rate=1.3), adapter.speak(SENTENCE, rate=0.8)
    assert fast.duration_s < 0.85 * slow.duration_s
    assert fast.phones[-1].end_s < 0.85 * slow.phones[-1].end_s
    high, low = adapter.speak(SENTENCE, pitch=1.3), adapter.speak(SENTENCE, pitch=0.8)
    assert _median_f0(high.samples) > 1.1 * _median_f0(low.samples)


def test_bad_requests_raise_typed_errors_that_say_what_to_do():
    with pytest.raises(tts.UnknownVoiceError, match="engine:voice"):
        tts.make_adapter("kal16")
    with pytest.raises(tts.UnknownVoiceError, match="engines:"):
        tts.engine_voices("sam")
    voices = tts.available_voices()
    if not voices:
        pytest.skip("no TTS engine installed")
    engine = voices[0].split(":")[0]
    with pytest.raises(tts.UnknownVoiceError, match="installed:"):
        tts.make_adapter(f"{engine}:no_such_voice")
    with pytest.raises(ValueError, match="rate must be in"):
        _adapter(voices[0]).speak("hello", rate=5.0)
    with pytest.raises(ValueError, match="empty"):
        _adapter(voices[0]).speak(" \n ")


def test_a_missing_engine_is_a_typed_error_and_left_out_of_available_voices(monkeypatch):
    monkeypatch.setattr(tts.shutil, "which", lambda name: None)
    with pytest.raises(tts.TTSEngineMissing, match="apt-get install flite"):
        tts.FliteAdapter.voices.__wrapped__(tts.FliteAdapter)  # uncached: ask again with flite gone

    class Absent(tts.TTSAdapter):
        engine = "absent"

        @classmethod
        def voices(cls):
            raise tts.TTSEngineMissing("absent is not installed")

        def _synthesize(self, text, rate, pitch):
            raise AssertionError("an absent engine is never asked to speak")

    monkeypatch.setitem(tts.ADAPTERS, "absent", Absent)
    assert not any(v.startswith("absent:") for v in tts.available_voices())
    with pytest.raises(tts.TTSEngineMissing):
        tts.make_adapter("absent:x")
