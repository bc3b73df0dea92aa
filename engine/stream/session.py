"""A live session: audio pushed in from any thread, paced video frames out of an async iterator.

    session = Session(renderer, model, preset="balanced")    # renderer and model shared by sessions
    session.push_audio(block, sample_rate=48000)              # any thread, never blocks
    async for frame in session.frames():                      # LiveFrame: pts, image, motion, audio
        send(frame)
    session.interrupt(); session.set_controls(emotion="happy"); session.close()

Threads and queues:

    producer thread(s)            worker thread "avatar-session"               asyncio consumer
    ------------------            ------------------------------               ----------------
    push_audio(x, rate)           take audio for the next chunk                async for f in frames():
      StreamResampler               (or silence, at its give-up time)            sleep_until(t0 + pts / FPS)
      -> 16 kHz mono                feed: AudioFrontend -> features              take frame pts
      -> [input queue] ---------->  step: driver (L + K features -> L motion)    <-- [output queue]
         bounded in seconds         render: Renderer, render_batch at a time  -->    bounded in frames

Drop policy, written down:
- Input: at most `max_backlog_s` of audio waits in the input queue; a push beyond that drops the
  OLDEST queued audio (the viewer sees the newest speech; latency stays bounded). Counted in
  `stats().audio_dropped_s`. A producer faster than real time (TTS) should raise max_backlog_s.
- Standing backlog (live sources, `drain_backlog_s` set): audio is consumed at the rate it arrives,
  so what queued while the producer stalled would otherwise stay queued, as latency, for the rest
  of the stream. What every chunk left queued over DRAIN_WINDOW_S, beyond drain_backlog_s, is
  dropped, OLDEST first (also counted in audio_dropped_s): a stall costs one skip, and about a
  second later latency is back within drain_backlog_s and the preset's headroom of its level (the
  silence filled in while the producer stalled ran up to headroom_s ahead of its audio).
- Output: at most the frames computed ahead (headroom plus one chunk) plus `max_video_lag_s` wait in
  the output queue; when the consumer falls further behind, the OLDEST frames are dropped (pts then
  skip ahead; counted in `frames_dropped`). Both queues are bounded: memory is flat in stream length.
- Interrupt: both queues and everything in flight are discarded (`audio_flushed_s`, `frames_flushed`).

Time:
- pts come from the timeline's sample count (engine.stream.scheduler): frame n shows timeline
  samples [640 n, 640 n + 640). Wall time never enters a pts.
- The consumer releases frame n at t0 + n / FPS on the clock (t0: the first `frames()` pull plus
  the preset's headroom), an absolute schedule: each slot is computed from n, never accumulated, so
  there is no drift. A frame not ready at its slot is released when it is (counted in frames_late).
- The worker makes a chunk as soon as its audio is in (never more than headroom plus one chunk ahead
  of its slot); it stops waiting `headroom_s` before the chunk's first slot and fills what is
  missing with silence. So a stalled or silent producer never freezes the face: frames keep coming
  on schedule, generated from silence, and the face eases to idle (mouth closing, blinks going on).
  Audio that arrives after such a gap (a talk spurt starting) goes after the silence, with `jitter_s`
  more of it, so the packets that follow have slack; a spurt's last packets go before it.
- Batched sessions (`phases`, engine.batch.PhaseGroups): t0 goes on the session's phase group's grid
  (the first frame waits up to a chunk for it), so audio arriving in real time completes the chunks of a
  group's sessions within a packet of each other; each chunk then waits (at most GATHER_S) for the
  group's others, and they are made together, their generator and renderer calls batched.
- Latency (DESIGN.md §3), per frame: arrival of its first sample -> the frame released on its slot.
  Audio arriving in real time lands on the timeline that far ahead of the slots, so every frame of a
  talk spurt has the same latency: engine.stream.presets.latency_floor_s(L, K) + headroom_s + jitter_s
  (+ up to a packet). Engine latency, per chunk: arrival of its first sample -> its first frame ready.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from engine.backends import ChunkStep
from engine.batch import ComputeSlots, PhaseGroups, cpu_slots
from engine.frames import LiveFrame
from engine.stream.clock import Clock, MonotonicClock
from engine.stream.drivers import Controls, motion_stream
from engine.stream.presets import Preset, get_preset, latency_floor_s
from engine.stream.resample import StreamResampler
from engine.stream.scheduler import Chunk, ChunkScheduler
from engine.timebase import FPS, SAMPLE_RATE

LATE_TOLERANCE_S = 0.01  # a frame released later than this after its slot counts as late
CLOSE_TIMEOUT_S = 10.0  # close() waits this long for the worker to finish its chunk
DRAIN_WINDOW_S = 1.0  # the standing backlog policy drains what stayed queued this long


class SessionError(RuntimeError):
    """The session's worker failed or the session was used after close(); the message says which."""


@dataclass(frozen=True)
class SessionOptions:
    max_backlog_s: float = 1.0  # input drop policy: queued audio beyond this is dropped, oldest first
    max_video_lag_s: float = 0.5  # output drop policy: how far the consumer may fall behind before frames drop
    # standing backlog policy for live sources (see above): the queued audio beyond a chunk's own that may
    # stand; None keeps every queued sample (producers faster than real time)
    drain_backlog_s: float | None = None
    vad: bool = True  # run the VAD (the learned driver was trained with it; off = a bit cheaper)
    seed: int = 0  # blinks, head motion and the generator's noise
    stats_window: int = 500  # the latest frames (latency) and chunks (the rest) stats() summarizes

    def __post_init__(self):
        if not self.max_backlog_s > 0 or not self.max_video_lag_s >= 0:
            raise ValueError(f"max_backlog_s must be > 0 and max_video_lag_s >= 0; got {self.max_backlog_s} "
                             f"and {self.max_video_lag_s}")
        if self.drain_backlog_s is not None and not self.drain_backlog_s >= 0:
            raise ValueError(f"drain_backlog_s must be >= 0 (or None to keep every queued sample); "
                             f"got {self.drain_backlog_s}")
        if self.stats_window < 1:
            raise ValueError(f"stats_window must be at least 1, got {self.stats_window}")


@dataclass(frozen=True)
class SessionStats:
    frames_out: int  # frames the consumer has taken
    frames_late: int  # of those, released more than LATE_TOLERANCE_S after their slot
    frames_dropped: int  # computed frames dropped because the consumer fell behind (output policy)
    frames_flushed: int  # computed frames discarded by interrupts
    audio_in_s: float  # audio pushed, after resampling to SAMPLE_RATE
    audio_dropped_s: float  # audio dropped by the input and standing backlog policies (oldest first)
    audio_flushed_s: float  # queued audio discarded by interrupts
    silence_inserted_s: float  # silence filled in where audio had not arrived in time (stalls, idle)
    backlog_s: float  # audio waiting in the input queue now
    interrupts: int
    latency_p50_s: float | None  # DESIGN.md §3 latency, per frame: arrival of its first sample -> frame released
    latency_p95_s: float | None
    latency_max_s: float | None
    ready_latency_p50_s: float | None  # engine latency per chunk: arrival of its first sample -> first frame ready
    ready_latency_p95_s: float | None
    compute_p50_s: float | None  # per chunk: a compute slot, features, motion, first render batch (0 simulated)
    compute_p95_s: float | None


class _Counters:
    def __init__(self, window: int):
        self.frames_out = self.frames_late = self.frames_dropped = self.frames_flushed = self.interrupts = 0
        self.audio_in = self.audio_dropped = self.audio_flushed = self.silence = 0  # samples
        self.latency: deque[float] = deque(maxlen=window)  # per frame shown
        self.ready_latency: deque[float] = deque(maxlen=window)  # per chunk
        self.compute: deque[float] = deque(maxlen=window)  # per chunk


def _percentile(values: deque[float], q: float) -> float | None:
    return float(np.percentile(np.fromiter(values, float), q)) if values else None


class Session:
    """One live stream: owns its audio frontend, driver state and queues; shares renderer and model.

    renderer: an engine.render.renderer.Renderer (anything whose `frames` takes (B, D) motion to
    (B, H, W, 3) uint8 RGB).
    model: the generator's chunk step (engine.backends.load, shared by sessions) for the learned driver,
    or None for the signal-processing baseline.
    preset: a name in engine.stream.presets.PRESETS, or a Preset.
    slots: the compute slots its worker makes chunks in (engine.batch.ComputeSlots; default the process's
    CPU slots, one a core, shared by every session): the chunk due first is made first, and no more
    workers compute at once than there are cores. A session in a phase group computes in its cohort instead.
    phases: the process's phase groups (engine.batch.PhaseGroups) when its sessions batch their calls
    (engine.backends.batching, engine.render.batching): the session's frame slots go on its group's grid
    (the first frame waits up to a chunk's period for it) and its chunks are made with the group's, so
    their calls meet. Needs the real clock. None (the default): each chunk is made alone, as soon as
    its audio is in.
    """

    def __init__(self, renderer: torch.nn.Module, model: ChunkStep | None = None,
                 preset: str | Preset = "balanced", controls: Controls = Controls(), *,
                 clock: Clock | None = None, options: SessionOptions = SessionOptions(),
                 slots: ComputeSlots | None = None, phases: PhaseGroups | None = None):
        self.preset = get_preset(preset)
        if phases is not None and clock is not None and not isinstance(clock, MonotonicClock):
            raise ValueError(f"phase groups run on the monotonic clock; got {type(clock).__name__} "
                             "(pass phases=None with a simulated clock)")
        self._slots = slots if slots is not None else cpu_slots()
        self.options = options
        self.clock = clock if clock is not None else MonotonicClock()
        self.driver = "baseline" if model is None else "learned"
        motion = motion_stream(model, controls, self.preset.steps, self.preset.baseline_chunk, options.seed)
        self.chunk, self.lookahead = motion.chunk, motion.lookahead  # L, K
        self._scheduler = ChunkScheduler(motion, renderer, self.preset.render_batch, options.vad)
        self._controls = controls
        self._phases = phases
        self._phase = None  # its group, joined at the first frames() pull and left when the worker ends
        self._lead = self.preset.headroom_s + self.chunk / FPS  # how far ahead of its slot a chunk may be made
        self._out_capacity = math.ceil((self._lead + options.max_video_lag_s) * FPS) + self.chunk
        self._slack = (None if options.drain_backlog_s is None  # queued samples a chunk may leave standing
                       else round(options.drain_backlog_s * SAMPLE_RATE))
        self._excess: deque[int] = deque(maxlen=max(1, round(DRAIN_WINDOW_S * FPS / self.chunk)))  # per take

        self._cond = threading.Condition()  # guards everything below that two threads touch
        self._queue: deque[list] = deque()  # input: [samples, arrival] in push order
        self._queued = 0  # samples in _queue
        self._awaited = 0  # queued samples the worker waits for: pushes below it need not wake it
        self._out: deque[tuple[LiveFrame, float | None]] = deque()  # output: (frame, arrival of its audio)
        self._t0: float | None = None  # slot of frame 0 on the clock, set by the first frames() pull
        self._epoch = 0  # bumped by interrupts: work started in an older epoch is discarded
        self._restart: tuple[int, np.ndarray | None] | None = None  # pending interrupt: (frame, motion shown)
        self._controls_changed = False
        self._taken = -1  # pts of the last frame the consumer took
        self._shown: np.ndarray | None = None  # its motion
        self._closed = False
        self._error: BaseException | None = None
        self._counters = _Counters(options.stats_window)
        self._loop: asyncio.AbstractEventLoop | None = None  # the consumer's loop and wake-up event
        self._wake: asyncio.Event | None = None

        self._push_lock = threading.Lock()  # keeps concurrent pushes in order through the resampler
        self._resampler: StreamResampler | None = None
        self._worker = threading.Thread(target=self._run, name="avatar-session", daemon=True)
        self.clock.attach()  # before it starts: a simulated clock must not move on without it
        self._worker.start()

    # --- producer side ---------------------------------------------------------------------
    def push_audio(self, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
        """Queue a block of audio ((n,) or (n, channels), float in [-1, 1] or integer PCM, any rate).

        Thread-safe and non-blocking; beyond max_backlog_s of queued audio the oldest is dropped."""
        with self._push_lock:
            if self._closed:
                raise SessionError("push_audio on a closed session; make a new Session")
            mono = self._resample(samples, sample_rate)
            if not len(mono):
                return
            with self._cond:
                self._queue.append([mono, self.clock.now()])
                self._queued += len(mono)
                self._counters.audio_in += len(mono)
                self._drop_oldest(self._queued - round(self.options.max_backlog_s * SAMPLE_RATE))
                if self._queued >= self._awaited:  # a push short of the chunk's audio changes nothing for it
                    self.clock.notify(self._cond)

    def _resample(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        flushed = np.zeros(0, np.float32)
        if self._resampler is None or self._resampler.rate != sample_rate:
            if self._resampler is not None:  # the source changed rate: finish the old stream first
                flushed = self._resampler.flush()
            self._resampler = StreamResampler(sample_rate)
        return np.concatenate([flushed, self._resampler.push(samples)])

    def _drop_oldest(self, excess: int) -> None:
        """Input and standing backlog policies (lock held): drop `excess` samples from the head of the queue."""
        if excess <= 0:
            return
        self._counters.audio_dropped += excess
        self._queued -= excess
        while excess:
            head = self._queue[0]
            if len(head[0]) <= excess:
                excess -= len(head[0])
                self._queue.popleft()
            else:
                head[0], excess = head[0][excess:], 0

    # --- controls --------------------------------------------------------------------------
    def set_controls(self, emotion: str | None = None, expressiveness: float | None = None,
                     head_motion: float | None = None) -> Controls:
        """Change live controls (None keeps a setting); checked now (UserError), applied from the next chunk."""
        changes = dict(emotion=emotion, expressiveness=expressiveness, head_motion=head_motion)
        with self._cond:
            self._controls = replace(self._controls, **{k: v for k, v in changes.items() if v is not None})
            self._controls_changed = True
            return self._controls

    def interrupt(self) -> None:
        """Barge-in: discard queued audio and computed frames; the face eases back to rest within 200 ms."""
        with self._cond:
            self._counters.interrupts += 1
            self._counters.audio_flushed += self._queued
            self._counters.frames_flushed += len(self._out)
            self._queue.clear()
            self._queued = 0
            self._out.clear()
            self._epoch += 1
            self._restart = (self._taken + 1, self._shown)
            self.clock.notify(self._cond)

    # --- consumer side ---------------------------------------------------------------------
    def slot(self, pts: int) -> float | None:
        """When frame `pts` is due on the session's clock (None before the first frames() pull)."""
        return None if self._t0 is None else self._t0 + pts / FPS

    async def frames(self) -> AsyncIterator[LiveFrame]:
        """The video, each frame released at its slot t0 + pts / FPS; ends when the session closes.
        One consumer per session."""
        with self._cond:
            if self._loop is not None:
                raise SessionError("frames() was already called: a session has one consumer "
                                   "(fan frames out to several viewers from that one)")
            self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
            self._t0 = self.clock.now() + self.preset.headroom_s
            if self._phases is not None:  # a member from now: before it, its chunks are not due
                self._phase = self._phases.join(self.chunk / FPS, self.preset)
                self._t0 = self._phase.align(self._t0)
            self.clock.notify(self._cond)
        while True:
            await self.clock.sleep_until(self.slot(self._taken + 1))  # first, so a simulated clock moves on
            taken = await self._take()
            if taken is None:
                return
            frame, arrival = taken
            slot = self.slot(frame.pts)
            await self.clock.sleep_until(slot)  # later than the wait above only after dropped frames
            now = self.clock.now()
            with self._cond:  # stats() may read from another thread
                self._counters.frames_late += now > slot + LATE_TOLERANCE_S
                if arrival is not None:
                    self._counters.latency.append(now - arrival)
            yield frame

    async def _take(self) -> tuple[LiveFrame, float | None] | None:
        """The next frame and when its first sample arrived; None once the session is closed."""
        while True:
            with self._cond:
                if self._error is not None:
                    raise SessionError(f"the session's worker failed: {self._error!r}") from self._error
                if self._out:
                    frame, arrival = self._out.popleft()
                    self._taken, self._shown = frame.pts, frame.motion
                    self._counters.frames_out += 1
                    return frame, arrival
                if self._closed:
                    return None
                self._wake.clear()
            await self._wake.wait()

    def _notify_consumer(self) -> None:
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # the consumer's loop is closed: nobody is waiting
                pass

    # --- worker ----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while (job := self._next_job()) is not None:
                self._make(*job)
        except BaseException as err:  # handed to the consumer, which raises it
            with self._cond:
                self._error, self._closed = err, True
            self._notify_consumer()
        finally:
            if self._phase is not None:
                self._phase.leave()
            self.clock.detach()

    def _next_job(self) -> tuple[list, Controls | None, int, float] | None:
        """Wait (lock held) until the next chunk can be made; return what to feed it, new controls, epoch and
        its first frame's slot."""
        sched = self._scheduler
        with self._cond:
            while not self._closed:
                if self._restart is not None:
                    sched.interrupt(*self._restart)
                    self._restart = None
                    self._excess.clear()
                if self._t0 is None:  # no consumer yet: nothing is due
                    self.clock.wait(self._cond, None)
                    continue
                need, slot, now = sched.samples_needed(), self.slot(sched.next_frame), self.clock.now()
                if self._queued >= need and now >= slot - self._lead:
                    if self._slack is not None:
                        self._drain(self._queued - need)
                    pieces = self._take_audio(need)
                elif now >= slot - self.preset.headroom_s:  # give up waiting: fill the gap with silence
                    pieces = self._fill(need, sched.idle)
                else:
                    self._awaited = need
                    self.clock.wait(self._cond, slot - (self._lead if self._queued >= need else self.preset.headroom_s))
                    self._awaited = 0
                    continue
                controls = self._controls if self._controls_changed else None
                self._controls_changed = False
                return pieces, controls, self._epoch, slot
        return None

    def _drain(self, excess: int) -> None:
        """Standing backlog policy (lock held): `excess` is what taking this chunk's audio leaves queued.
        It swings by a packet from chunk to chunk; only what stayed queued at every take for DRAIN_WINDOW_S
        is standing, and that, less the slack, is dropped (oldest first)."""
        self._excess.append(excess)
        if len(self._excess) == self._excess.maxlen and (standing := min(self._excess)) > self._slack:
            self._drop_oldest(standing - self._slack)
            self._excess.clear()  # the next drop needs a whole window of its own

    def _fill(self, need: int, idle: bool) -> list:
        """The queued audio and silence to make up `need` samples (lock held). Audio that starts a
        talk spurt (the timeline is idle) goes after the silence, with jitter_s more of it so the
        packets that follow have slack; audio that ends one (or stalls mid-stream) goes first."""
        self._excess.clear()  # the queue ran short: whatever queues from here on is a new backlog
        gap = need - self._queued + (round(self.preset.jitter_s * SAMPLE_RATE) if self._queued else 0)
        self._counters.silence += gap
        silence, audio = [np.zeros(gap, np.float32), None], self._take_audio(self._queued)
        return [silence, *audio] if idle else [*audio, silence]

    def _take_audio(self, n: int) -> list:
        """Pop the first n queued samples (lock held) as [samples, arrival] pieces."""
        pieces = []
        self._queued -= n
        while n:
            samples, arrival = self._queue[0]
            if len(samples) <= n:
                pieces.append(self._queue.popleft())
                n -= len(samples)
            else:
                pieces.append([samples[:n], arrival])
                self._queue[0][0], n = samples[n:], 0
        return pieces

    def _make(self, pieces: list, controls: Controls | None, epoch: int, due: float) -> None:
        """Feed, step and render one chunk (no lock held; by the chunk's first slot `due`), posting frames as
        each batch is ready: in a compute slot, or in a phase group with the group's other chunks of this
        tick. A cohort's members wait for each other at every batched stage, so at most a few of its threads
        compute at once; in the slots too they would also wait for other groups' members (engine p95 at 4
        batched sessions: ~250 ms in the slots, ~210 without)."""
        started = self.clock.now()
        if self._phase is None:
            with self._slots.hold(due):
                self._compute(pieces, controls, epoch, started)
            return
        with self._phase.gather().member():
            self._compute(pieces, controls, epoch, started)

    def _compute(self, pieces: list, controls: Controls | None, epoch: int, started: float) -> None:
        sched = self._scheduler
        sched.feed_all(pieces)
        if controls is not None:
            sched.driver.set_controls(controls)
        if self._epoch != epoch:  # interrupted while waiting for the lock: the next job restarts
            return
        chunk: Chunk = sched.step()
        for i, batch in enumerate(sched.render(chunk)):
            with self._cond:
                if self._epoch != epoch or self._closed:
                    return  # interrupted or closed meanwhile: this chunk is stale
                for frame in batch:
                    self._out.append((frame, chunk.arrivals[frame.pts - chunk.pts]))
                excess = len(self._out) - self._out_capacity
                for _ in range(max(excess, 0)):  # output drop policy: the oldest frames go
                    self._out.popleft()
                self._counters.frames_dropped += max(excess, 0)
                if i == 0:
                    ready = self.clock.now()
                    self._counters.compute.append(ready - started)
                    if chunk.arrivals[0] is not None:
                        self._counters.ready_latency.append(ready - chunk.arrivals[0])
            self._notify_consumer()

    # --- lifetime --------------------------------------------------------------------------
    def stats(self) -> SessionStats:
        c = self._counters
        with self._cond:
            return SessionStats(
                frames_out=c.frames_out, frames_late=c.frames_late, frames_dropped=c.frames_dropped,
                frames_flushed=c.frames_flushed, audio_in_s=c.audio_in / SAMPLE_RATE,
                audio_dropped_s=c.audio_dropped / SAMPLE_RATE, audio_flushed_s=c.audio_flushed / SAMPLE_RATE,
                silence_inserted_s=c.silence / SAMPLE_RATE, backlog_s=self._queued / SAMPLE_RATE,
                interrupts=c.interrupts, latency_p50_s=_percentile(c.latency, 50),
                latency_p95_s=_percentile(c.latency, 95), latency_max_s=max(c.latency, default=None),
                ready_latency_p50_s=_percentile(c.ready_latency, 50),
                ready_latency_p95_s=_percentile(c.ready_latency, 95),
                compute_p50_s=_percentile(c.compute, 50), compute_p95_s=_percentile(c.compute, 95),
            )

    def latency_samples(self) -> dict[str, list[float]]:
        """Copies of the raw samples stats() summarizes (the latest stats_window of each), oldest first,
        in seconds: "latency" per frame shown, "ready_latency" and "compute" per chunk."""
        c = self._counters
        with self._cond:
            return {"latency": list(c.latency), "ready_latency": list(c.ready_latency), "compute": list(c.compute)}

    @property
    def latency_floor_s(self) -> float:
        """The least a chunk's first sample can wait for its chunk's last one (before compute and headroom)."""
        return latency_floor_s(self.chunk, self.lookahead)

    def close(self) -> None:
        """Stop the worker (after its current batch), end frames(), free the stream's state. Idempotent."""
        with self._push_lock, self._cond:
            self._closed = True
            self._queue.clear()
            self._queued = 0
            self.clock.notify(self._cond)
        self._notify_consumer()
        if threading.current_thread() is not self._worker:
            self._worker.join(CLOSE_TIMEOUT_S)
            if self._worker.is_alive():
                raise SessionError(f"the session's worker did not stop within {CLOSE_TIMEOUT_S} s")
        with self._cond:
            self._out.clear()
        self._scheduler = None  # the frontend, driver state and KV cache go with it
        self._resampler = None

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
