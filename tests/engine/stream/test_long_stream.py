"""Ten minutes of live audio through the real session threads on a simulated clock: no drift,
no growth. (About ten seconds of CPU: marked slow, run in CI.)"""

import numpy as np
import pytest

from engine.motion.spec import index
from engine.stream import Session, SessionOptions, SimulatedClock
from engine.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from tests.engine.stream.harness import collect, small_renderer

MINUTES = 10
RATE = 48000  # the browser's microphone rate: the stream goes through the resampler too
BLOCK = RATE // 50  # 20 ms packets
BURST = RATE // 25  # a 40 ms noise burst at the start of every second


class Beeper:
    """A producer of 20 ms packets at 48 kHz, silent but for a burst at every whole second."""

    def __init__(self, session: Session, seconds: int):
        self.session, self.blocks = session, seconds * 50
        self.pushed = 0
        self.noise = (0.5 * np.random.default_rng(0).standard_normal(BURST)).astype(np.float32)

    def __call__(self, until: float) -> None:
        while self.pushed < self.blocks and self.pushed / 50 <= until:
            block = np.zeros(BLOCK, np.float32)
            offset = self.pushed % 50 * BLOCK  # where this packet starts within its second
            if offset < BURST:
                block[: min(BLOCK, BURST - offset)] = self.noise[offset : offset + BLOCK]
            self.session.push_audio(block, sample_rate=RATE)
            self.pushed += 1


@pytest.mark.slow
def test_ten_minutes_without_drift_or_growth():
    import asyncio

    frames = MINUTES * 60 * FPS
    sizes = []
    onsets = []  # timeline sample of each burst's first loud frame
    jaw_lag = []  # frames from a burst's first loud frame to its widest jaw
    pending = {}
    latencies = []  # median latency over the last 500 frames, every 1000 frames

    clock = SimulatedClock()
    with Session(small_renderer(), None, "balanced", clock=clock, options=SessionOptions(vad=False)) as s:
        producer = Beeper(s, MINUTES * 60)
        times = np.empty(frames)
        pts = np.empty(frames, np.int64)
        count = [0]

        def on_frame(frame):
            n = count[0]
            times[n], pts[n] = clock.now(), frame.pts
            count[0] += 1
            loud = np.abs(frame.audio).max() > 0.05
            if loud and not pending and (not onsets or frame.pts * SAMPLES_PER_FRAME - onsets[-1] > SAMPLE_RATE // 2):
                start = frame.pts * SAMPLES_PER_FRAME + int(np.flatnonzero(np.abs(frame.audio) > 0.05)[0])
                onsets.append(start)
                pending.update(frame=frame.pts, jaw=[])
            if pending:
                pending["jaw"].append(frame.motion[index("jawOpen")])
                if len(pending["jaw"]) == 6:
                    jaw_lag.append(int(np.argmax(pending["jaw"])))
                    pending.clear()
            if frame.pts % 1000 == 999:
                latencies.append(round(s.stats().latency_p50_s, 6))
                sched = s._scheduler
                sizes.append((s._queued, len(s._queue), len(s._out), len(sched._arrivals), len(sched._audio),
                              len(sched._features)))

        asyncio.run(collect(s, frames, producer=producer, on_frame=on_frame))
        stats = s.stats()

    np.testing.assert_array_equal(pts, np.arange(frames))  # every frame, in order
    np.testing.assert_array_equal(times, s.slot(0) + np.arange(frames) / FPS)  # each on its slot, exactly
    assert len(onsets) >= MINUTES * 60 - 1
    # One second of input is one second of timeline, once the first packets' jitter has been absorbed
    # (the producer pushes at the consumer's 40 ms steps: a gap or two of silence at the start).
    assert set(np.diff(onsets)[5:]) == {SAMPLE_RATE} and stats.silence_inserted_s < 0.5
    assert len(set(latencies[1:])) == 1  # so the latency stays what it was at minute 1
    assert len(set(jaw_lag[5:])) == 1  # the mouth follows the sound at the same lag at minute 1 and minute 10
    assert stats.frames_late == stats.frames_dropped == 0 and stats.audio_dropped_s == 0
    # Memory is flat: every queue and buffer holds at most a few chunks, at the start as at the end.
    sizes = np.array(sizes)
    assert np.all(sizes.max(0) <= sizes[: len(sizes) // 10].max(0) + 4 * SAMPLES_PER_FRAME)
    assert sizes[:, 0].max() < 0.5 * SAMPLE_RATE and sizes[:, 2].max() <= 3 * s.chunk + s.preset.headroom_s * FPS
