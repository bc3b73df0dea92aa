"""The one place where time is defined.

Every other module derives its timing from these constants; nobody writes 640 or 0.04
elsewhere. Derived values use checked division so a change that breaks the integer
relationships fails at import, not as a slow drift an hour into a stream.
"""

from fractions import Fraction


def checked_div(numerator: int, denominator: int) -> int:
    """Integer division that refuses to round: the timing grid must tile exactly."""
    quotient, remainder = divmod(numerator, denominator)
    if remainder:
        raise ValueError(f"{numerator} is not a multiple of {denominator}: timing constants must divide exactly")
    return quotient


SAMPLE_RATE = 16000  # audio samples per second (mono float32 everywhere inside the engine)
FPS = 25  # video frames per second
SAMPLES_PER_FRAME = checked_div(SAMPLE_RATE, FPS)  # 640: frame n covers samples [640 n, 640 n + 640)
MEL_HOP = checked_div(SAMPLE_RATE, 100)  # 160 samples = 10 ms between mel frames
MELS_PER_FRAME = checked_div(SAMPLES_PER_FRAME, MEL_HOP)  # 4 mel frames per video frame
N_FFT = 400  # 25 ms analysis window (whisper's)
N_MELS = 80  # mel bins (whisper's)

AUDIO_TIME_BASE = Fraction(1, SAMPLE_RATE)  # AudioChunk.pts counts samples
VIDEO_TIME_BASE = Fraction(1, FPS)  # VideoFrame.pts / MotionChunk.pts count video frames


def frames_for_samples(num_samples: int) -> int:
    """Number of video frames that start inside `num_samples` samples (a partial last frame counts)."""
    return -(-num_samples // SAMPLES_PER_FRAME)


def frame_to_sample(frame: int) -> int:
    """First audio sample covered by video frame `frame`."""
    return frame * SAMPLES_PER_FRAME


def frame_to_seconds(frame: int) -> float:
    return frame / FPS
