import asyncio
from dataclasses import replace

import numpy as np
import pytest
import torch

from engine.audio.frontend import extract_features
from engine.audio.io import to_mono_16k
from engine.backends.batching import BatchedStep
from engine.backends.eager import TorchStep
from engine.batch import PhaseGroups
from engine.errors import UserError
from engine.motion import spec
from engine.motion.learned import LearnedDriver, LearnedOptions
from engine.motion.model import MotionConfig, MotionTransformer
from engine.render.batching import BatchedRenderer
from engine.stream import Controls, Preset, Session, SessionError, SessionOptions, SimulatedClock
from engine.stream.scheduler import EASE_FRAMES
from engine.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from tests.engine.motion.test_model import perturb_gates
from tests.engine.stream.harness import JAW, Producer, motion_of, program_audio, run, small_renderer, speechlike

FAST = SessionOptions(vad=False)  # the VAD is the frontend's slowest part; these tests do not need it
UPFRONT = SessionOptions(vad=False, max_backlog_s=60.0)  # room to push a whole clip before the first pull


@pytest.fixture(scope="module")
def tiny():
    """A tiny generator's step as the registry loads pretrained weights: guided (a session keeps its step's guidance)."""
    torch.manual_seed(0)
    return TorchStep(perturb_gates(MotionTransformer(MotionConfig.tiny())), LearnedOptions(steps=4).sampler())


def session(model=None, preset="balanced", options=FAST, **kwargs) -> Session:
    return Session(small_renderer(), model, preset, clock=SimulatedClock(), options=options, **kwargs)


def test_pts_are_contiguous_released_on_their_slots_and_cover_the_pushed_samples(tiny):
    audio = speechlike(1.5)
    with session(tiny, options=UPFRONT) as s:
        s.push_audio(audio)
        pairs = run(s, 60)
        t0 = s.slot(0)
    assert [f.pts for f, _ in pairs] == list(range(60))
    assert all(t == pytest.approx(t0 + f.pts / FPS, abs=1e-9) for f, t in pairs)
    # Frame n shows timeline samples [640 n, 640 n + 640): the pushed clip first, then silence filled in.
    timeline = program_audio(pairs)
    np.testing.assert_array_equal(timeline[: len(audio)], audio)
    assert not timeline[len(audio) :].any()
    frame = pairs[0][0]
    assert frame.image.shape == (128, 128, 3) and frame.image.dtype == np.uint8
    assert frame.audio.shape == (SAMPLES_PER_FRAME,)


@pytest.mark.parametrize("driver", ["learned", "baseline"])
def test_odd_sized_pushes_give_the_motion_of_one_push(tiny, driver):
    model = tiny if driver == "learned" else None
    audio = speechlike(2.0, seed=1)
    with session(model, options=UPFRONT) as one:
        one.push_audio(audio)
        whole = run(one, 60)
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(len(audio), 40, replace=False))
    with session(model, options=UPFRONT) as many:
        for piece in np.split(audio, cuts):
            many.push_audio(piece)
        pieces = run(many, 60)
    np.testing.assert_allclose(motion_of(pieces), motion_of(whole), atol=1e-5)
    # Motion equal to float rounding may flip a pixel's last uint8 step, or move a remap sample
    # across one of its 1/32 px steps (a few levels at a sharp edge): never more, nowhere else.
    for (a, _), (b, _) in zip(pieces, whole):
        diff = np.abs(a.image.astype(int) - b.image)
        assert diff.max() <= 8 and (diff > 1).mean() < 1e-3


def test_the_learned_stream_is_the_offline_learned_driver(tiny):
    """Pinned to the reference: a session over a clip animates it as LearnedDriver.drive does."""
    audio = speechlike(2.5, seed=2)
    with session(tiny, options=UPFRONT, controls=Controls(expressiveness=1.5, head_motion=0.5)) as s:
        s.push_audio(audio)
        live = motion_of(run(s, 50))
    offline = LearnedDriver(tiny, LearnedOptions(expressiveness=1.5, head_motion=0.5, steps=4)).drive(
        extract_features(audio, with_vad=False))
    np.testing.assert_allclose(live, offline[:50], atol=1e-5)  # 50 frames (and their lookahead) end before the tail


def test_48k_stereo_int16_blocks_play_as_their_16k_mono_signal():
    rng = np.random.default_rng(3)
    mono = speechlike(1.0, rate=48000)
    stereo = (np.stack([mono, mono], axis=1) * 32767).astype(np.int16)
    with session(None, options=UPFRONT) as s:
        for block in np.split(stereo, np.sort(rng.choice(len(stereo), 30, replace=False))):
            s.push_audio(block, sample_rate=48000)
        pairs = run(s, 30)
    expected = to_mono_16k(stereo, 48000)
    head = len(expected) - 200  # the last few samples wait for input the filter has not seen yet
    np.testing.assert_allclose(program_audio(pairs)[:head], expected[:head], atol=1e-5)


def test_interrupt_flushes_and_the_jaw_is_at_rest_within_5_frames():
    def on_frame(frame):
        if not at and frame.pts >= 20 and frame.motion[JAW] > 0.3:  # mid-speech, mouth open
            at.append(frame.pts)
            s.interrupt()

    at = []
    with session(None, options=UPFRONT) as s:  # the baseline's silence is an exactly closed jaw
        s.push_audio(speechlike(4.0))
        pairs = run(s, 70, on_frame=on_frame)
        stats = s.stats()
    n = at[0]
    assert [f.pts for f, _ in pairs] == list(range(70))  # the timeline goes on without a gap
    jaw = motion_of(pairs)[:, JAW]
    assert jaw[n] > 0.3 and not jaw[n + EASE_FRAMES :].any()  # the 5th frame after is at rest
    assert np.all(np.diff(jaw[n : n + EASE_FRAMES + 1]) < 0)  # eased down, not jumped
    assert stats.interrupts == 1 and stats.audio_flushed_s > 1.5
    assert not program_audio(pairs)[(n + 1) * SAMPLES_PER_FRAME :].any()  # the flushed speech is never played


def test_audio_after_an_interrupt_is_animated():
    def on_frame(frame):
        if frame.pts == 10:
            s.interrupt()
            s.push_audio(speechlike(1.0, seed=5))

    with session(None) as s:
        pairs = run(s, 60, on_frame=on_frame)
    assert motion_of(pairs)[20:, JAW].max() > 0.2


def test_a_stalled_producer_gets_frames_on_schedule_and_the_mouth_closes():
    with session(None, options=UPFRONT) as s:
        s.push_audio(speechlike(1.0))  # then nothing: the producer stalls
        pairs = run(s, 100)
        stats = s.stats()
    times = np.array([t for _, t in pairs])
    np.testing.assert_allclose(np.diff(times), 1 / FPS, atol=1e-9)  # 25 fps through the stall
    motion = motion_of(pairs)
    assert motion[:25, JAW].max() > 0.2 and motion[40:, JAW].max() < 1e-3  # eased shut, not cut
    assert np.all(np.diff(motion[27:40, JAW]) <= 0)
    assert stats.silence_inserted_s > 2.0 and stats.frames_late == 0
    assert motion[40:, spec.index("headPitch")].std() > 0  # still alive (breathing), not frozen


def test_idle_before_any_audio_then_live_speech_lands_near_floor_plus_headroom():
    speech = speechlike(1.0)
    with session(None) as s:
        producer = Producer(s, speech, start=2.0)  # 20 ms packets from 2 s on, each pushed as its time comes
        pairs = run(s, 100, producer=producer)
    timeline = program_audio(pairs)
    landed = int(np.flatnonzero(timeline)[0] - np.flatnonzero(speech)[0])  # timeline sample where the speech begins
    np.testing.assert_array_equal(timeline[landed : landed + len(speech)], speech)  # whole, no gap inside
    first = landed // SAMPLES_PER_FRAME
    jaw = motion_of(pairs)[:, JAW]
    assert not jaw[:first].any() and jaw[first : first + 25].max() > 0.2
    # Its first sample is shown at the slot of its frame plus its offset in the frame.
    shown = s.slot(first) + (landed % SAMPLES_PER_FRAME) / SAMPLE_RATE - producer.arrivals[0]
    expected = s.latency_floor_s + s.preset.headroom_s
    assert expected - s.chunk / FPS <= shown <= expected + s.preset.jitter_s + s.chunk / FPS


def test_latency_samples_are_the_raw_values_stats_summarize():
    with session(None, options=SessionOptions(vad=False, stats_window=7)) as s:
        run(s, 40, producer=Producer(s, speechlike(1.0), start=0.0))
        samples, stats = s.latency_samples(), s.stats()
    assert len(samples["latency"]) == 7 and len(samples["ready_latency"]) <= 7  # the latest window only
    assert stats.latency_max_s == max(samples["latency"])
    assert stats.latency_p50_s == pytest.approx(float(np.median(samples["latency"])))


def test_input_drop_policy_keeps_the_newest_audio():
    audio = speechlike(3.0)
    with session(None, options=SessionOptions(vad=False, max_backlog_s=1.0)) as s:
        s.push_audio(audio)
        assert s.stats().audio_dropped_s == pytest.approx(2.0) and s.stats().backlog_s == pytest.approx(1.0)
        pairs = run(s, 30)
    np.testing.assert_array_equal(program_audio(pairs)[:SAMPLE_RATE], audio[-SAMPLE_RATE:])


class Stalling:
    """A producer that holds its audio back while the coming slot is in [start, end), then catches up at once."""

    def __init__(self, producer: Producer, start: float, end: float):
        self.producer, self.start, self.end = producer, start, end

    def __call__(self, until: float) -> None:
        if not self.start <= until < self.end:
            self.producer(until)


@pytest.mark.parametrize("drain", [None, 0.02])
def test_a_stall_backlog_drains_when_asked_and_nothing_else_is_dropped(drain):
    """Audio that queued while the producer stalled stays queued, as latency, unless drain_backlog_s is
    set (live sources): then it goes after DRAIN_WINDOW_S, and a steady stream loses nothing to it."""
    options = SessionOptions(vad=False, max_backlog_s=0.4, drain_backlog_s=drain)
    latency = {}
    for stall in (None, (1.0, 1.5)):
        with session(None, options=options) as s:
            producer = Producer(s, speechlike(6.0), start=0.0)
            run(s, 150, producer=producer if stall is None else Stalling(producer, *stall))
            latency[stall], stats = s.latency_samples()["latency"], s.stats()
        if stall is None:
            assert stats.audio_dropped_s == 0 and stats.frames_late == 0  # packet-sized swings are not a backlog
    before, after = np.median(latency[None][-20:]), np.median(latency[(1.0, 1.5)][-20:])
    assert latency[(1.0, 1.5)][:15] == pytest.approx(latency[None][:15])  # the same stream up to the stall
    if drain is None:
        assert after > before + 0.25  # the stall's 0.5 s (less the 0.4 s cap's drop) stays as latency
    else:
        assert after <= before + drain + s.preset.headroom_s + 1e-9


def test_drain_backlog_must_be_a_duration_or_none():
    with pytest.raises(ValueError, match="drain_backlog_s must be >= 0"):
        SessionOptions(drain_backlog_s=-0.1)


def test_output_drop_policy_when_the_consumer_falls_behind():
    clock = SimulatedClock()
    with Session(small_renderer(), None, clock=clock, options=SessionOptions(vad=False, max_video_lag_s=0.2)) as s:

        async def lagging():
            stream = s.frames()
            first = await anext(stream)
            clock.advance_to(clock.now() + 4.0)  # the consumer stalls for 4 s; the worker keeps to the schedule
            rest = [await anext(stream) for _ in range(5)]
            await stream.aclose()
            return [first, *rest]

        frames = asyncio.run(lagging())
        stats = s.stats()
    pts = [f.pts for f in frames]
    assert stats.frames_dropped > 50 and pts[1] - pts[0] > 50 and pts[1:] == list(range(pts[1], pts[1] + 5))
    assert stats.frames_late >= 1


def test_controls_are_checked_at_once_and_applied_from_the_next_chunk():
    def on_frame(frame):
        if frame.pts == 20:
            s.set_controls(emotion="happy", head_motion=0.0)

    with session(None) as s:
        with pytest.raises(UserError, match="emotion must be one of"):
            s.set_controls(emotion="smug")
        with pytest.raises(UserError, match="expressiveness"):
            s.set_controls(expressiveness=5.0)
        pairs = run(s, 60, on_frame=on_frame)
    smile = motion_of(pairs)[:, spec.index("mouthSmile_L")]
    assert not smile[:21].any() and smile[-1] > 0.3  # the baseline eases the new emotion in


def test_learned_emotion_control_changes_the_generated_motion(tiny):
    def on_frame(frame):
        if frame.pts == 7:
            s.set_controls(emotion="surprise")

    with session(tiny) as s:
        changed = motion_of(run(s, 24, on_frame=on_frame))
    with session(tiny) as s:
        same = motion_of(run(s, 24))
    np.testing.assert_array_equal(changed[:8], same[:8])  # frames made before the change
    assert not np.allclose(changed[12:], same[12:])


def test_close_joins_the_worker_and_ends_the_stream(tiny):
    s = session(tiny)
    worker = s._worker

    async def consume():
        stream = s.frames()
        got = [await anext(stream) for _ in range(3)]
        s.close()
        got += [f async for f in stream]  # ends instead of hanging
        return got

    asyncio.run(consume())
    assert not worker.is_alive() and s.closed
    with pytest.raises(SessionError, match="closed"):
        s.push_audio(np.zeros(640, np.float32))
    s.close()  # idempotent


def test_a_failing_renderer_surfaces_in_the_consumer():
    class Broken(torch.nn.Module):
        def frames(self, motion):
            raise RuntimeError("renderer exploded")

    with Session(Broken(), None, clock=SimulatedClock(), options=FAST) as s:
        with pytest.raises(SessionError, match="renderer exploded"):
            run(s, 5)


def test_one_consumer_per_session(tiny):
    async def two():
        first, second = s.frames(), s.frames()
        await anext(first)
        with pytest.raises(SessionError, match="one consumer"):
            await anext(second)
        await first.aclose()

    with session(tiny) as s:
        asyncio.run(two())


def test_presets_keep_the_learned_window_and_set_the_baseline_chunk(tiny):
    with session(tiny, preset="low-latency") as low, session(None, preset="low-latency") as base:
        assert (low.chunk, low.lookahead) == (tiny.config.chunk, tiny.config.lookahead)
        assert (base.chunk, base.lookahead) == (1, 0)
        assert low.latency_floor_s == pytest.approx((4 + 2) * 0.04 + 0.024)
    custom = Preset("test", steps=1, render_batch=3, headroom_s=0.0, jitter_s=0.0, baseline_chunk=3)
    with session(None, preset=custom) as s:
        assert [f.pts for f, _ in run(s, 9)] == list(range(9))
    with pytest.raises(UserError, match="unknown preset 'fast'; use one of low-latency, balanced, quality"):
        session(None, preset="fast")


def test_the_real_renderer_streams_frames(tiny):
    with Session(small_renderer(), tiny, clock=SimulatedClock(), options=FAST) as s:
        s.push_audio(speechlike(0.5))
        pairs = run(s, 6)
    image = pairs[0][0].image
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    assert not np.array_equal(image, pairs[5][0].image)  # the face moves


def test_the_monotonic_clock_path_streams(tiny):
    """Real time, briefly: frames flow with contiguous pts (no speed is asserted)."""
    with Session(small_renderer(), tiny, options=FAST) as s:
        s.push_audio(speechlike(0.3))

        async def take():
            stream = s.frames()
            got = [await anext(stream) for _ in range(8)]
            await stream.aclose()
            return got

        frames = asyncio.run(take())
    assert [f.pts for f in frames] == list(range(8))


def test_sessions_in_a_phase_group_share_calls_and_each_streams_its_motion_alone(tiny):
    """Real time: three sessions batched in one phase group (one leaving after 10 frames) stream on the
    group's grid, their generator and renderer calls meet, and each gets the frames it gets alone."""
    clips = {seed: speechlike(1.5, seed=seed) for seed in range(3)}
    alone = {}
    for seed, clip in clips.items():
        with session(tiny, options=replace(UPFRONT, seed=seed)) as s:
            s.push_audio(clip)
            alone[seed] = run(s, 30)
    phases, step, render = PhaseGroups(count=1), BatchedStep(tiny), BatchedRenderer(small_renderer())
    opened = {seed: Session(render, step, options=replace(UPFRONT, seed=seed), phases=phases) for seed in clips}
    for seed, s in opened.items():
        s.push_audio(clips[seed])

    async def take(s: Session, frames: int) -> list:
        stream = s.frames()
        got = [await anext(stream) for _ in range(frames)]
        await stream.aclose()
        s.close()  # the last one leaves mid-stream: the others must not wait for it
        return got

    async def together():
        return await asyncio.gather(*(take(s, 10 if seed == 2 else 30) for seed, s in opened.items()))

    try:
        got = dict(zip(opened, asyncio.run(together())))
    finally:
        step.close()
        render.close()
    group = phases.join(opened[0].chunk / FPS, opened[0].preset)
    for seed, frames in got.items():
        mine = [f for f, _ in alone[seed][: len(frames)]]
        assert [f.pts for f in frames] == [f.pts for f in mine]
        np.testing.assert_allclose(np.stack([f.motion for f in frames]), np.stack([f.motion for f in mine]),
                                   atol=1e-5, err_msg=f"session {seed}")
        images = np.stack([f.image for f in frames]).astype(int) - np.stack([f.image for f in mine])
        # the motion rounds a little differently batched (~1e-7), and so do the batched renderer's products: a few
        # pixels on edges differ by rounding (on an AVX-512 EPYC 26 of 1.5 M, by up to 3 levels); another
        # session's frames would differ almost everywhere
        assert (images != 0).mean() < 1e-3 and np.abs(images).max() <= 8, f"session {seed}: not its own frames"
        grid = (opened[seed].slot(0) - group.phase) * FPS / opened[seed].chunk
        assert abs(grid - round(grid)) < 1e-6, "the session's slots are not on its group's grid"
    assert step.streams / step.calls > 1.5 and render.frames_out / render.calls > 3, "the calls did not meet"


# ----------------------------------------------------------------------- the shipped weights, live


def test_the_shipped_model_talks_stops_when_cut_off_and_idles_when_starved():
    from engine import assets
    from engine.audio.io import load_audio
    from engine.motion.learned import load_generator

    model, speech = TorchStep(load_generator()), load_audio(assets.SAMPLE_SPEECH)
    options = SessionOptions(max_backlog_s=30.0)  # with the VAD, as the model was trained

    def on_frame(frame):
        if not cut and frame.pts >= 30 and frame.motion[JAW] > 0.3:  # mid-word, mouth open: barge in
            cut.append(frame.pts)
            s.interrupt()

    cut = []
    with Session(small_renderer(), model, clock=SimulatedClock(), options=options) as s:
        s.push_audio(speech)
        jaw = motion_of(run(s, 110, on_frame=on_frame))[:, JAW]
    n = cut[0]
    assert jaw[n + EASE_FRAMES] < 0.05 and jaw[n + EASE_FRAMES :].mean() < 0.03  # closed in 200 ms, then still

    with Session(small_renderer(), model, clock=SimulatedClock(), options=options) as s:
        s.push_audio(speech[: 3 * SAMPLE_RATE])  # then the producer stalls mid-sentence
        jaw = motion_of(run(s, 110))[:, JAW]
    assert jaw[: 3 * FPS].max() > 0.3 and jaw[3 * FPS + 10 :].mean() < 0.03  # talked, then the mouth settled shut
