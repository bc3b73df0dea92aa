import numpy as np
import pytest

from engine.audio.frontend import LOOKAHEAD_SAMPLES
from engine.motion import spec
from engine.stream.scheduler import EASE_FRAMES, ChunkScheduler
from engine.timebase import SAMPLES_PER_FRAME
from tests.engine.stream.harness import JAW, small_renderer, speechlike


class Still:
    """A MotionStream that always answers the same pose and records what it is told."""

    chunk, lookahead = 4, 2

    def __init__(self):
        self.pose = spec.neutral()
        self.calls = []

    def step(self, features):
        assert len(features) == self.chunk + self.lookahead
        return np.tile(self.pose, (self.chunk, 1))

    def reset(self):
        self.calls.append("reset")

    def interrupt(self):
        self.calls.append("interrupt")

    def set_controls(self, controls):
        self.calls.append(controls)


def feed_and_step(sched, n):
    chunks = []
    for _ in range(n):
        sched.feed(np.zeros(sched.samples_needed(), np.float32), None)
        chunks.append(sched.step())
    return chunks


def test_a_chunk_needs_its_frames_its_lookahead_and_the_frontends():
    sched = ChunkScheduler(Still(), small_renderer(), render_batch=4, with_vad=False)
    assert sched.samples_needed() == (4 + 2) * SAMPLES_PER_FRAME + LOOKAHEAD_SAMPLES
    with pytest.raises(RuntimeError, match="more samples"):
        sched.step()
    audio = speechlike(0.5)
    for piece, arrival in zip(np.split(audio[: sched.samples_needed()], [5, 999, 3000]), [1.0, 2.0, 3.0, 4.0]):
        sched.feed(piece, arrival)
    chunk = sched.step()
    assert chunk.pts == 0 and chunk.motion.shape == (4, spec.D)
    np.testing.assert_array_equal(chunk.audio.reshape(-1), audio[: 4 * SAMPLES_PER_FRAME])
    assert chunk.arrivals == [1.0, 2.0, 3.0, 3.0]  # when the sample each frame starts with arrived
    assert sched.next_frame == 4 and sched.samples_needed() == 4 * SAMPLES_PER_FRAME


class Recorder(Still):
    """Still, keeping the features of every step."""

    def step(self, features):
        self.calls.append(features)
        return super().step(features)


def test_runs_fed_at_once_are_the_runs_fed_one_by_one():
    audio = speechlike(0.5, seed=3)
    cuts, arrivals = [320, 640, 960, 1500, 4000], [1.0, None, 2.0, 2.5, 3.0, 3.5]
    drivers, chunks = [Recorder(), Recorder()], []
    for driver, at_once in zip(drivers, (False, True)):
        sched = ChunkScheduler(driver, small_renderer(), render_batch=4, with_vad=True)
        runs = list(zip(np.split(audio[: sched.samples_needed() + 2000], cuts), arrivals))
        if at_once:
            sched.feed_all(runs)
        else:
            for piece, arrival in runs:
                sched.feed(piece, arrival)
        chunks.append(sched.step())
    one, all_ = (d.calls[-1] for d in drivers)
    for name in ("mel", "energy", "f0", "voicing", "vad"):
        np.testing.assert_allclose(getattr(all_, name), getattr(one, name), atol=1e-5, err_msg=name)
    assert chunks[0].arrivals == chunks[1].arrivals == [1.0, 2.0, 2.5, 3.0]
    np.testing.assert_array_equal(chunks[0].audio, chunks[1].audio)


def test_frames_come_render_batch_at_a_time_with_their_pts_motion_and_audio():
    sched = ChunkScheduler(Still(), small_renderer(), render_batch=3, with_vad=False)
    (chunk,) = feed_and_step(sched, 1)
    batches = list(sched.render(chunk))
    assert [[f.pts for f in b] for b in batches] == [[0, 1, 2], [3]]
    frame = batches[1][0]
    assert frame.image.dtype == np.uint8 and np.array_equal(frame.motion, chunk.motion[3])
    assert frame.audio.shape == (SAMPLES_PER_FRAME,)


def test_an_interrupt_cross_fades_from_the_shown_pose_in_5_frames():
    driver = Still()
    sched = ChunkScheduler(driver, small_renderer(), render_batch=4, with_vad=False)
    shown = spec.neutral()
    shown[JAW] = 0.6
    sched.interrupt(10, shown)
    assert driver.calls == ["reset", "interrupt"]  # reset once at the stream's start; told of the cut-off
    chunks = feed_and_step(sched, 3)
    assert [c.pts for c in chunks] == [10, 14, 18]
    jaw = np.concatenate([c.motion for c in chunks])[:, JAW]
    w = np.clip(np.arange(1, 13) / EASE_FRAMES, 0, 1)
    np.testing.assert_allclose(jaw, 0.6 * (1 - w * w * (3 - 2 * w)), atol=1e-7)
    assert np.all(np.diff(jaw[:EASE_FRAMES]) < 0) and not jaw[EASE_FRAMES - 1 :].any()  # at rest on the 5th frame
