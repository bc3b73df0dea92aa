import numpy as np

from engine.audio.vad import StreamingVAD, speech_probability
from engine.timebase import SAMPLE_RATE, frames_for_samples

SENTENCE = "Hello there. The weather is lovely today, and I am happy to talk with you."


def test_speech_high_silence_and_quiet_noise_low(speak, rng):
    speech = speak(SENTENCE)
    silence = np.zeros(SAMPLE_RATE, np.float32)
    noise = (0.003 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32)
    x = np.concatenate([silence, speech, noise])
    p = speech_probability(x)
    assert len(p) == frames_for_samples(len(x))
    frames = frames_for_samples(SAMPLE_RATE)
    assert p[:frames].max() < 0.2
    assert p[-frames + 10 :].max() < 0.2  # noise, once the speech has decayed out of the recurrent state
    assert np.median(p[frames : frames + frames_for_samples(len(speech))]) > 0.8


def test_streams_do_not_share_state(speak):
    speech = speak(SENTENCE)
    fresh = speech_probability(speech[: SAMPLE_RATE])
    busy = StreamingVAD()
    busy.push(speech)  # leaves this stream mid-utterance
    other = StreamingVAD()
    np.testing.assert_array_equal(np.concatenate([other.push(speech[:SAMPLE_RATE]), other.flush()]), fresh)
    busy.reset()
    np.testing.assert_array_equal(np.concatenate([busy.push(speech[:SAMPLE_RATE]), busy.flush()]), fresh)


def test_chunked_equals_whole(speak, rng):
    speech = speak(SENTENCE)[: 2 * SAMPLE_RATE]
    vad, parts, i = StreamingVAD(), [], 0
    for size in rng.integers(0, 2000, 25):
        parts.append(vad.push(speech[i : i + size]))
        i += size
    parts += [vad.push(speech[i:]), vad.flush()]
    np.testing.assert_allclose(np.concatenate(parts), speech_probability(speech), atol=1e-6)


def test_loading_the_network_keeps_the_callers_thread_count():
    """silero-vad's import sets torch to 1 thread process-wide; the engine must not inherit that."""
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(2); from engine.audio.vad import _network; _network(); "
            "print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2"
