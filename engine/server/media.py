"""Between a Session and WebRTC: the relay that encodes one session's frames once and fans the packets
out to viewers, the viewers' tracks, and the pump that feeds a received microphone track to a session.

One session, one generation, one encode: `FrameRelay` pulls `session.frames()` (already paced on the
session's absolute schedule), encodes each frame once (VP8 video, Opus audio) and hands the same
`av.Packet`s to every subscribed `Viewer`; aiortc's senders only packetize and encrypt them (a sender
whose track yields packets runs no encoder). So a viewer costs RTP and SRTP, not an encode. `avatar serve`
takes the same path with one viewer per session.

- Codec: VP8, the codec every WebRTC browser must implement (RFC 7742) and what aiortc peers offer first.
  `Viewer.add_to(pc)` restricts the video transceiver to it (the answer or offer carries VP8 alone); a peer
  that cannot take VP8 is refused at negotiation. Bitrate: aiortc's starting VP8 bitrate, fixed (one encoder
  serves every viewer, so no single viewer's bandwidth estimate (REMB) steers it).
- Keyframes: a new viewer's video starts at a keyframe (subscribing asks for one). A keyframe request
  (RTCP PLI or FIR) arriving at any viewer's sender forces the next frame to be a keyframe for all;
  requests closer together than KEYFRAME_GAP_S wait for the gap to pass (one viewer cannot turn the
  stream into keyframes for everybody).
- Drop policy: a viewer's video queue holds at most VIEWER_QUEUE frames. A viewer that falls behind (a stalled
  sender, a bad network) loses its queued frames, skips ahead to the next keyframe and asks for one; its
  audio queue drops its oldest packets. Neither the encoder nor the other viewers ever wait for it.

A frame's audio is the program audio it was animated from (640 samples at 16 kHz), so viewers hear exactly
what the face shows, delayed with it. Both streams stamp pts from the frame's index (video 90 kHz, audio
16 kHz): wall time never enters a timestamp.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import av
import cv2
import numpy as np
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from engine.stream import LiveFrame, Session, SessionError
from engine.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

log = logging.getLogger("avatar.server")

VIEWER_QUEUE = 3  # video frames a viewer may lag behind the encoder before it skips to the next keyframe
AUDIO_QUEUE = 4 * VIEWER_QUEUE  # its 20 ms audio packets; the oldest are dropped beyond that
KEYFRAME_GAP_S = 0.5  # forced keyframes at most this often (requests in between wait, they are not lost)
VIDEO_MIME = "video/VP8"
VIDEO_BITRATE = 500_000  # bit/s: aiortc's starting VP8 bitrate, what a viewer got before the encoder was shared
AUDIO_BITRATE = 48_000  # bit/s: Opus, mono speech at 16 kHz
VIDEO_CLOCK = 90000  # RTP video clock rate
VIDEO_TICKS = VIDEO_CLOCK // FPS
AUDIO_PIECE = SAMPLES_PER_FRAME // 2  # 20 ms: one Opus packet


class VideoEncoder:
    """VP8 for one stream, libvpx's real-time settings as aiortc's sender uses them: an RGB image in, one
    packet out (pts in 90 kHz ticks, `is_keyframe` set)."""

    def __init__(self, bitrate: int = VIDEO_BITRATE):
        self.bitrate = bitrate
        self.frames_encoded = 0
        self.keyframes = 0  # of them keyframes
        self.last_keyframe = 0  # frames_encoded when the last one was made
        self._codec: av.video.codeccontext.VideoCodecContext | None = None

    def _open(self, width: int, height: int):
        codec = av.CodecContext.create("libvpx", "w")
        codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
        codec.time_base = Fraction(1, VIDEO_CLOCK)
        codec.bit_rate = self.bitrate
        codec.gop_size = 3000  # keyframes when asked for (a new viewer, a PLI), not on a timer
        codec.qmin, codec.qmax = 2, 56
        codec.thread_count = 1
        codec.options = {"deadline": "realtime", "cpu-used": "-6", "lag-in-frames": "0",  # no frame held back
                         "minrate": str(self.bitrate), "maxrate": str(self.bitrate),  # constant bitrate
                         "bufsize": str(self.bitrate), "undershoot-pct": "100", "overshoot-pct": "15",
                         "noise-sensitivity": "4", "static-thresh": "1", "partitions": "0"}
        return codec

    def encode(self, image: np.ndarray, pts: int, keyframe: bool = False) -> list[av.Packet]:
        """`image` (H, W, 3) uint8 RGB shown at frame index `pts`; a keyframe when `keyframe`."""
        height, width = image.shape[:2]
        if self._codec is None or (self._codec.width, self._codec.height) != (width, height):
            self._codec, keyframe = self._open(width, height), True
        frame = _yuv420(image)
        frame.pts, frame.time_base = pts * VIDEO_TICKS, Fraction(1, VIDEO_CLOCK)
        if keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        packets = self._codec.encode(frame)
        self.frames_encoded += 1
        if any(packet.is_keyframe for packet in packets):
            self.keyframes, self.last_keyframe = self.keyframes + 1, self.frames_encoded
        for packet in packets:  # stamped from the frame: the sender converts packet.pts with packet.time_base
            packet.pts, packet.time_base = frame.pts, frame.time_base
        return packets


def _yuv420(image: np.ndarray) -> av.VideoFrame:
    """(H, W, 3) uint8 RGB -> a yuv420p frame, BT.601 limited range as swscale makes it (luma to a level, the
    subsampled chroma to a level on average): OpenCV's conversion takes 0.06 ms at 512 px against swscale's 0.9
    through PyAV, in a server that converts every frame of every session. Odd sizes, which I420 cannot halve,
    go through swscale."""
    height, width = image.shape[:2]
    if height % 2 or width % 2:
        return av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
    return av.VideoFrame.from_ndarray(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2YUV_I420),
                                      format="yuv420p")


class AudioEncoder:
    """Opus for one stream: a frame's 640 samples at 16 kHz in, two 20 ms packets out (pts in 16 kHz
    samples; the sender converts them to Opus' 48 kHz RTP clock). Mono, no resampling: libopus takes 16 kHz."""

    def __init__(self, bitrate: int = AUDIO_BITRATE):
        self._codec = av.CodecContext.create("libopus", "w")
        self._codec.sample_rate, self._codec.format, self._codec.layout = SAMPLE_RATE, "s16", "mono"
        self._codec.bit_rate, self._codec.time_base = bitrate, Fraction(1, SAMPLE_RATE)
        self._codec.options = {"application": "voip"}

    def encode(self, samples: np.ndarray | None, pts: int) -> list[av.Packet]:
        """One frame's program audio (None: silence) shown at frame index `pts`."""
        samples = np.zeros(SAMPLES_PER_FRAME, np.float32) if samples is None else samples
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
        packets = []
        for i, piece in enumerate(np.split(pcm, SAMPLES_PER_FRAME // AUDIO_PIECE)):
            start = pts * SAMPLES_PER_FRAME + i * AUDIO_PIECE
            frame = av.AudioFrame.from_ndarray(piece[None], format="s16", layout="mono")  # (1, n) packed mono
            frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, start, Fraction(1, SAMPLE_RATE)
            for packet in self._codec.encode(frame):  # one per piece; libopus' own pts lead by its look-ahead
                packet.pts, packet.time_base = start, frame.time_base
                packets.append(packet)
        return packets


@dataclass(frozen=True)
class Encoded:
    """One frame, encoded once for every viewer."""

    video: list[av.Packet]
    audio: list[av.Packet]
    keyframe: bool
    frame: LiveFrame  # what they encode (its pts and motion go to the motion stream)


class Viewer:
    """One viewer's copy of the stream: a queue of the relay's video packets and one of its audio packets."""

    def __init__(self, request_keyframe: Callable[[], None]):
        self.frames_dropped = 0  # video frames this viewer lost because it fell behind
        self.frames_sent = 0  # video frames its track handed to its sender
        self.keyframes_sent = 0  # of them keyframes
        self.request_keyframe = request_keyframe  # what a keyframe request (PLI/FIR) at its sender calls
        self.on_video: Callable[[LiveFrame], None] | None = None  # told of each frame sent (the motion stream)
        # video: (packet, the frame it encodes); audio: packets
        self._queues: dict[str, deque] = {"video": deque(), "audio": deque()}
        self._ready = {kind: asyncio.Event() for kind in self._queues}
        self._synced = False  # its video resumes only at a keyframe (at the start, and after a drop)
        self._closed = False

    def put(self, encoded: Encoded) -> None:
        video, audio = self._queues["video"], self._queues["audio"]
        if encoded.video:  # one VP8 packet a frame
            if self._synced and len(video) >= VIEWER_QUEUE:
                # fallen behind: without the oldest frame the rest cannot be decoded either; resume at a keyframe
                self.frames_dropped += len(video)
                video.clear()
                self._synced = False
                if not encoded.keyframe:
                    self.request_keyframe()
            self._synced = self._synced or encoded.keyframe
            if self._synced:
                video.extend((packet, encoded.frame) for packet in encoded.video)
                self._ready["video"].set()
            else:
                self.frames_dropped += 1
        for packet in encoded.audio:
            if len(audio) >= AUDIO_QUEUE:
                audio.popleft()
            audio.append(packet)
        if encoded.audio:
            self._ready["audio"].set()

    async def get(self, kind: str):
        """The next item for one track (video: a packet and its frame; audio: a packet); MediaStreamError
        once the stream has ended."""
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
        """Its video and audio tracks; their recv() yields encoded packets (VP8, Opus), which an aiortc
        sender sends as they are. See add_to() for the peer connection's side."""
        return AvatarVideoTrack(self), AvatarAudioTrack(self)

    def add_to(self, pc: RTCPeerConnection, audio: bool = True, direction: str | None = None
               ) -> tuple[RTCRtpSender, RTCRtpSender | None]:
        """Add its tracks to `pc` before the codecs are negotiated (an answerer: before setRemoteDescription;
        an offerer: before createOffer): the video transceiver takes VP8 alone (the relay's packets), and
        a keyframe request arriving at the video sender reaches the relay. `direction` (e.g. "sendonly", a
        WHIP publisher's) makes transceivers of that direction; None adds the tracks. Returns the senders."""
        def add(track) -> RTCRtpSender:
            return pc.addTrack(track) if direction is None else pc.addTransceiver(track, direction=direction).sender

        video, sound = self.tracks()
        sender = add(video)
        transceiver = next(t for t in pc.getTransceivers() if t.sender is sender)
        transceiver.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                                         if c.mimeType in (VIDEO_MIME, "video/rtx")])
        route_keyframe_requests(sender, self.request_keyframe)
        return sender, add(sound) if audio else None


def route_keyframe_requests(sender: RTCRtpSender, request: Callable[[], None]) -> None:
    """Make a keyframe request (RTCP PLI/FIR) arriving at `sender` call `request`. aiortc answers one by
    flagging its sender's own encoder (`_send_keyframe`), which a sender of encoded packets never runs."""
    if not callable(getattr(sender, "_send_keyframe", None)):
        raise TypeError(f"this aiortc ({type(sender).__module__}) has no RTCRtpSender._send_keyframe to route "
                           "keyframe requests through; install the aiortc version pyproject.toml names")
    sender._send_keyframe = request


class FrameRelay:
    """Pulls one session's frames, encodes each once, and gives the packets to every viewer subscribed at
    the time. No viewers, no encoding."""

    def __init__(self, session: Session):
        self.session = session
        self.viewers: set[Viewer] = set()
        self.video, self.audio = VideoEncoder(), AudioEncoder()
        self._keyframe_wanted = False
        self._last_keyframe = -KEYFRAME_GAP_S
        self._task: asyncio.Task | None = None

    def subscribe(self) -> Viewer:
        viewer = Viewer(self.request_keyframe)
        self.viewers.add(viewer)
        self.request_keyframe()  # its video starts at one
        return viewer

    def unsubscribe(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)
        viewer.close()

    def request_keyframe(self) -> None:
        self._keyframe_wanted = True

    def start(self) -> None:
        """Start pulling frames (the session's clock starts now: its first frame is due after its headroom)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="avatar-relay")

    def _encode(self, frame: LiveFrame, keyframe: bool) -> Encoded:
        video = self.video.encode(frame.image, frame.pts, keyframe)
        return Encoded(video, self.audio.encode(frame.audio, frame.pts), any(p.is_keyframe for p in video), frame)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for frame in self.session.frames():
                if not self.viewers:
                    continue
                now = time.monotonic()
                keyframe = self._keyframe_wanted and now - self._last_keyframe >= KEYFRAME_GAP_S
                if keyframe:
                    self._keyframe_wanted, self._last_keyframe = False, now
                # off the event loop (VP8 takes milliseconds); frames stay in order: one at a time
                encoded = await loop.run_in_executor(None, self._encode, frame, keyframe)
                for viewer in list(self.viewers):
                    viewer.put(encoded)
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
    """A viewer's video: the relay's VP8 packets."""

    kind = "video"

    def __init__(self, viewer: Viewer):
        super().__init__()
        self._viewer = viewer

    async def recv(self) -> av.Packet:
        packet, frame = await self._viewer.get("video")
        self._viewer.frames_sent += 1
        self._viewer.keyframes_sent += packet.is_keyframe
        if self._viewer.on_video is not None:
            self._viewer.on_video(frame)
        return packet


class AvatarAudioTrack(MediaStreamTrack):
    """A viewer's audio: the relay's Opus packets, 20 ms each (aiortc stamps one RTP timestamp per item)."""

    kind = "audio"

    def __init__(self, viewer: Viewer):
        super().__init__()
        self._viewer = viewer

    async def recv(self) -> av.Packet:
        return await self._viewer.get("audio")


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
