"""Between a Session and WebRTC: the relay that fans one session's frames out to viewers, the
avatar's video and audio tracks, and the pump that feeds a received microphone track to a session.

One session, one generation: `FrameRelay` pulls `session.frames()` (already paced on the session's
absolute schedule) and hands every frame to each subscribed `Viewer`. A viewer's queue holds at most
VIEWER_QUEUE frames and drops its oldest beyond that, so a slow viewer (a stalled encoder, a bad
network) loses frames without holding back the session or the other viewers.

A frame's audio is the program audio it was animated from (640 samples at 16 kHz), so the audio
track sends exactly what the face shows, delayed with it. Both tracks stamp pts from the frame's
index (video 90 kHz, audio 16 kHz): wall time never enters a timestamp.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from fractions import Fraction

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from engine.stream import LiveFrame, Session, SessionError
from engine.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

log = logging.getLogger("avatar.server")

VIEWER_QUEUE = 3  # frames a viewer may lag behind the session before its oldest are dropped
VIDEO_CLOCK = 90000  # RTP video clock rate
VIDEO_TICKS = VIDEO_CLOCK // FPS


class Viewer:
    """One viewer's copy of the stream: a video and an audio queue of the same frames."""

    def __init__(self):
        self.frames_dropped = 0  # frames this viewer's queues dropped (it fell behind)
        self.frames_sent = 0  # video frames its track handed to the encoder
        self.on_video: Callable[[LiveFrame], None] | None = None  # told of each of those (the motion stream)
        self._queues = {"video": deque(), "audio": deque()}
        self._ready = {kind: asyncio.Event() for kind in self._queues}
        self._closed = False

    def put(self, frame: LiveFrame) -> None:
        for kind, queue in self._queues.items():
            if len(queue) >= VIEWER_QUEUE:
                queue.popleft()
                self.frames_dropped += kind == "video"
            queue.append(frame)
            self._ready[kind].set()

    async def get(self, kind: str) -> LiveFrame:
        """The next frame for one track; MediaStreamError once the stream has ended."""
        queue = self._queues[kind]
        while not queue:
            if self._closed:
                raise MediaStreamError
            self._ready[kind].clear()
            await self._ready[kind].wait()
        return queue.popleft()

    def close(self) -> None:
        self._closed = True
        for event in self._ready.values():
            event.set()

    def tracks(self) -> tuple[MediaStreamTrack, MediaStreamTrack]:
        return AvatarVideoTrack(self), AvatarAudioTrack(self)


class FrameRelay:
    """Pulls one session's frames and gives each to every viewer subscribed at the time."""

    def __init__(self, session: Session):
        self.session = session
        self.viewers: set[Viewer] = set()
        self._task: asyncio.Task | None = None

    def subscribe(self) -> Viewer:
        viewer = Viewer()
        self.viewers.add(viewer)
        return viewer

    def unsubscribe(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)
        viewer.close()

    def start(self) -> None:
        """Start pulling frames (the session's clock starts now: its first frame is due after its headroom)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="avatar-relay")

    async def _run(self) -> None:
        try:
            async for frame in self.session.frames():
                for viewer in list(self.viewers):
                    viewer.put(frame)
        except Exception as err:  # the session's worker failed: end every viewer's stream, say why once
            log.error("session failed, ending its stream: %s", err)
        finally:
            for viewer in list(self.viewers):
                viewer.close()

    async def close(self) -> None:
        """Close the session (its worker thread is joined off the event loop) and end every viewer."""
        await asyncio.get_running_loop().run_in_executor(None, self.session.close)
        if self._task is not None:
            await self._task
        for viewer in list(self.viewers):
            viewer.close()


class AvatarVideoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, viewer: Viewer):
        super().__init__()
        self._viewer = viewer

    async def recv(self) -> av.VideoFrame:
        frame = await self._viewer.get("video")
        video = av.VideoFrame.from_ndarray(frame.image, format="rgb24")
        video.pts, video.time_base = frame.pts * VIDEO_TICKS, Fraction(1, VIDEO_CLOCK)
        self._viewer.frames_sent += 1
        if self._viewer.on_video is not None:
            self._viewer.on_video(frame)
        return video


class AvatarAudioTrack(MediaStreamTrack):
    """The frames' audio in 20 ms pieces: aiortc's Opus encoder stamps every packet of one input frame
    with the same RTP timestamp, so a 40 ms frame would go out as two packets a receiver merges."""

    kind = "audio"

    def __init__(self, viewer: Viewer):
        super().__init__()
        self._viewer = viewer
        self._pending: av.AudioFrame | None = None

    async def recv(self) -> av.AudioFrame:
        if self._pending is not None:
            piece, self._pending = self._pending, None
            return piece
        frame = await self._viewer.get("audio")
        samples = np.zeros(SAMPLES_PER_FRAME, np.float32) if frame.audio is None else frame.audio
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
        first, self._pending = (_audio_piece(half, frame.pts * SAMPLES_PER_FRAME + i * AUDIO_PIECE)
                                for i, half in enumerate(np.split(pcm, SAMPLES_PER_FRAME // AUDIO_PIECE)))
        return first


AUDIO_PIECE = SAMPLES_PER_FRAME // 2  # 20 ms: one Opus packet


def _audio_piece(pcm: np.ndarray, pts: int) -> av.AudioFrame:
    audio = av.AudioFrame.from_ndarray(pcm[None], format="s16", layout="mono")  # (1, n) packed mono
    audio.sample_rate, audio.pts, audio.time_base = SAMPLE_RATE, pts, Fraction(1, SAMPLE_RATE)
    return audio


def frame_samples(frame: av.AudioFrame) -> np.ndarray:
    """A decoded audio frame as (n, channels) samples (int PCM or float), packed or planar alike."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    return data.T if frame.format.is_planar else data.reshape(-1, channels)


AUDIBLE = 10 ** (-50 / 20)  # peak level (of full scale) that counts as sound: a quiet room's mic is above it


async def pump_audio(track: MediaStreamTrack, session: Session, heard: Callable[[], None]) -> None:
    """Feed a received microphone track to a session until the track ends, calling `heard()` for every
    frame with sound in it (the server's idle policy). A frame that cannot be read is skipped and
    logged once; the stream goes on."""
    bad = 0
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        try:
            samples = frame_samples(frame)
            session.push_audio(samples, frame.sample_rate)
        except SessionError:  # the session was closed: nothing left to feed
            return
        except (ValueError, TypeError) as err:
            bad += 1
            if bad == 1:
                log.warning("skipping an unreadable audio frame from a client (%s); further ones are counted", err)
            continue
        level = AUDIBLE * (np.iinfo(samples.dtype).max if samples.dtype.kind == "i" else 1.0)
        if samples.size and (samples.max() > level or samples.min() < -level):  # no abs(): int16's -32768
            heard()
