"""One encode per broadcast (engine/server/media.py): the relay's encoders and each viewer's drop policy on
their own, then a broadcast server with real aiortc viewers over loopback."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from websockets.asyncio.client import connect

from engine import assets
from engine.frames import LiveFrame
from engine.motion.choice import Baseline
from engine.server.app import Broadcast, ServerConfig
from engine.server.media import KEYFRAME_GAP_S, VIEWER_QUEUE, AudioEncoder, Encoded, FrameRelay, VideoEncoder, Viewer
from engine.timebase import FPS, SAMPLES_PER_FRAME
from tests.engine.server.serving import ServerThread

SIZE = 128
PRESET = "balanced" if assets.FAST_MOTION.is_file() else "quality"  # the live presets need motion_fast


def _image(i: int) -> np.ndarray:
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[:, (3 * i) % SIZE] = 255  # a moving bar: every frame differs
    return image


def _encoded(encoder: VideoEncoder, audio: AudioEncoder, i: int, keyframe: bool = False) -> Encoded:
    image = _image(i)
    video = encoder.encode(image, i, keyframe)
    return Encoded(video, audio.encode(None, i), any(p.is_keyframe for p in video), LiveFrame(i, image))


def test_the_encoders_stamp_pts_from_the_frame_index_and_key_on_request():
    video, audio = VideoEncoder(), AudioEncoder()
    first, second, forced = (video.encode(_image(i), i, keyframe=i == 7) for i in (5, 6, 7))
    assert [len(first), len(second), len(forced)] == [1, 1, 1], "one VP8 packet a frame"
    assert first[0].is_keyframe and not second[0].is_keyframe and forced[0].is_keyframe
    assert [p[0].pts for p in (first, second, forced)] == [5 * 3600, 6 * 3600, 7 * 3600]
    assert video.frames_encoded == 3
    packets = audio.encode(np.zeros(SAMPLES_PER_FRAME, np.float32), 5)
    assert [p.pts for p in packets] == [5 * SAMPLES_PER_FRAME, 5 * SAMPLES_PER_FRAME + SAMPLES_PER_FRAME // 2]


def test_frames_convert_to_yuv420_as_swscale_converts_them():
    """The encoder's OpenCV conversion gives swscale's BT.601 limited-range planes: luma to a level, the half-size
    chroma to a level on average (a few at sharp edges: the two subsample it with different filters); odd sizes
    go through swscale itself."""
    import av
    import cv2

    from engine import assets
    from engine.server.media import _yuv420

    portrait = cv2.cvtColor(cv2.imread(str(assets.DEFAULT_PORTRAIT)), cv2.COLOR_BGR2RGB)
    for size in (256, 512):
        image = cv2.resize(portrait, (size, size), interpolation=cv2.INTER_AREA)
        ours = _yuv420(image).to_ndarray().astype(int)
        theirs = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p").to_ndarray()
        assert ours.shape == theirs.shape, size
        luma, chroma = np.abs(ours - theirs)[:size], np.abs(ours - theirs)[size:]
        assert luma.max() <= 1 and chroma.mean() <= 1 and np.percentile(chroma, 99) <= 6, size
    odd = _yuv420(cv2.resize(portrait, (255, 255)))
    assert (odd.width, odd.height, odd.format.name) == (255, 255, "yuv420p")


def test_a_viewer_that_falls_behind_drops_to_the_next_keyframe_and_asks_for_one():
    requests = []
    viewer = Viewer(lambda: requests.append(True))
    video, audio = VideoEncoder(), AudioEncoder()
    viewer.put(_encoded(video, audio, 0))  # the first frame is a keyframe: the viewer starts there
    for i in range(1, VIEWER_QUEUE):
        viewer.put(_encoded(video, audio, i))
    assert not requests and viewer.frames_dropped == 0
    viewer.put(_encoded(video, audio, VIEWER_QUEUE))  # nobody read: the queue is full
    assert requests and viewer.frames_dropped == VIEWER_QUEUE + 1
    viewer.put(_encoded(video, audio, VIEWER_QUEUE + 1))  # still no keyframe: skipped
    assert viewer.frames_dropped == VIEWER_QUEUE + 2
    viewer.put(_encoded(video, audio, VIEWER_QUEUE + 2, keyframe=True))

    async def first_video():
        return await viewer.get("video")

    packet, frame = asyncio.run(first_video())
    assert packet.is_keyframe and packet.pts == (VIEWER_QUEUE + 2) * 3600, "it resumes at the keyframe"
    assert frame.pts == VIEWER_QUEUE + 2, "with the frame it encodes (for the motion stream)"
    assert len(viewer._queues["audio"]) <= 4 * VIEWER_QUEUE, "its audio queue is bounded too"


# --- a broadcast server and real aiortc viewers ------------------------------------------------------------


@pytest.fixture(scope="module")
def broadcast():
    from engine.render.renderer import Renderer
    from engine.stream import Session

    session = Session(Renderer.from_photo(assets.DEFAULT_PORTRAIT, SIZE), None, PRESET)  # no audio: it idles
    thread = ServerThread(ServerConfig(port=0, size=SIZE, driver=Baseline(), max_sessions=8, mode=Broadcast()),
                          broadcast=session)
    yield thread
    thread.close()
    session.close()


class Watcher:
    """A real aiortc viewer of the broadcast: every decoded video frame's (pts, keyframe, arrival)."""

    def __init__(self, url: str):
        self.url, self.frames = url, []
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._tasks: list[asyncio.Task] = []

    async def start(self, video_codecs: tuple[str, ...] = ()) -> dict:
        """Connect; returns the server's answer (or error). `video_codecs` limits what the offer takes."""
        self.pc.addTransceiver("audio", direction="recvonly")
        video = self.pc.addTransceiver("video", direction="recvonly")
        if video_codecs:
            video.setCodecPreferences([c for c in RTCRtpReceiver.getCapabilities("video").codecs
                                       if c.mimeType in video_codecs])
        self.pc.on("track", lambda track: self._tasks.append(asyncio.create_task(self._take(track))))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.ws = await connect(self.url)
        await self.ws.recv()  # hello
        await self.ws.send(json.dumps({"type": "offer", "sdp": self.pc.localDescription.sdp}))
        reply = json.loads(await self.ws.recv())
        if reply["type"] == "answer":
            await self.pc.setRemoteDescription(RTCSessionDescription(reply["sdp"], "answer"))
        return reply

    async def _take(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if track.kind == "video":
                self.frames.append((frame.pts, frame.key_frame, time.monotonic()))

    async def ask_for_keyframe(self) -> None:
        """Send an RTCP PLI for the video, as a decoder that lost a picture does (aiortc's own PLI path)."""
        receiver = next(t.receiver for t in self.pc.getTransceivers() if t.kind == "video")
        ssrc = next(s.ssrc for s in (await receiver.getStats()).values() if s.type == "inbound-rtp")
        await receiver._send_rtcp_pli(ssrc)

    async def until(self, frames: int, timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while len(self.frames) < frames:
                await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self.pc.close()
        await self.ws.close()
        for task in self._tasks:
            task.cancel()


def _fps(frames: list) -> float:
    return (len(frames) - 1) / (frames[-1][2] - frames[0][2])


async def _watch(url: str, count: int) -> list[Watcher]:
    watchers = [Watcher(url) for _ in range(count)]
    for watcher in watchers:
        assert (await watcher.start())["type"] == "answer"
    await asyncio.gather(*(w.until(2 * FPS) for w in watchers))
    return watchers


@pytest.mark.slow
def test_three_viewers_decode_one_encode_per_frame_and_a_keyframe_request_keys_all(broadcast):
    relay: FrameRelay = broadcast.server.relay

    async def scenario():
        watchers = await _watch(broadcast.ws_url, 3)
        shown_before, encoded_before = relay.session.stats().frames_out, relay.video.frames_encoded
        received_before = [len(w.frames) for w in watchers]
        await asyncio.sleep(2.0)
        shown, encoded = relay.session.stats().frames_out - shown_before, relay.video.frames_encoded - encoded_before
        received = [len(w.frames) - n for w, n in zip(watchers, received_before)]
        await asyncio.sleep(KEYFRAME_GAP_S)  # beyond the gap after the last viewer's starting keyframe
        requests, viewers = _note_keyframe_requests(broadcast.server)
        keyframes, sent_before = relay.video.keyframes, [v.keyframes_sent for v in viewers]
        await watchers[1].ask_for_keyframe()
        await asyncio.gather(*(w.until(len(w.frames) + FPS) for w in watchers))
        for w in watchers:
            await w.close()
        sent = [v.keyframes_sent - n for v, n in zip(viewers, sent_before)]
        return shown, encoded, received, requests, relay.video.keyframes - keyframes, sent, watchers

    shown, encoded, received, requests, keyframes, sent, watchers = asyncio.run(scenario())
    # 2 s of stream: every frame the session gave the relay encoded once (not once a viewer: 3x), and each of
    # the three viewers decoded about as many (counted on their side, a few frames in flight either way)
    assert 1.5 * FPS <= shown <= 2.5 * FPS and abs(encoded - shown) <= 1, (shown, encoded)
    assert all(abs(n - encoded) <= 0.2 * encoded for n in received), (encoded, received)
    assert all(_fps(w.frames) >= 24 for w in watchers), [_fps(w.frames) for w in watchers]
    # one viewer's PLI reached the relay through its sender; the next frame encoded (or the one after, when
    # one was being encoded as it came) was a keyframe, the only one since, and every viewer was sent it
    # (how many each got before depends on how the three joins fell: a joining viewer keys everybody)
    assert len(requests) == 1 and keyframes == 1, (requests, keyframes)
    assert 1 <= relay.video.last_keyframe - requests[0] <= 2, (requests, relay.video.last_keyframe)
    assert sent == [1, 1, 1], sent


def _note_keyframe_requests(server) -> tuple[list[int], list]:
    """Wrap each visitor's video sender's keyframe hook (which add_to routed to the relay) to note
    frames_encoded when a request arrives, then pass it on. Returns those notes and the visitors' viewers."""
    requests = []
    for visitor in server.visitors:
        sender = next(s for s in visitor.pc.getSenders() if s.kind == "video")

        def noted(route=sender._send_keyframe):
            requests.append(server.relay.video.frames_encoded)
            route()

        sender._send_keyframe = noted
    return requests, [visitor.viewer for visitor in server.visitors]


@pytest.mark.slow
def test_a_stalled_viewer_stalls_nobody_else(broadcast):
    relay: FrameRelay = broadcast.server.relay

    async def subscribe():
        return relay.subscribe()

    stalled = broadcast.call(subscribe())  # a viewer whose sender never reads (a frozen publisher, say)
    try:
        async def watch():
            watchers = await _watch(broadcast.ws_url, 2)
            await asyncio.sleep(2.0)
            for w in watchers:
                await w.close()
            return watchers

        watchers = asyncio.run(watch())
        assert all(_fps(w.frames) >= 24 for w in watchers), [_fps(w.frames) for w in watchers]
        assert len(stalled._queues["video"]) <= VIEWER_QUEUE and stalled.frames_dropped > 3 * FPS

        async def resume():  # it reads again: its video picks up at a keyframe
            return await asyncio.wait_for(stalled.get("video"), 5)

        assert broadcast.call(resume())[0].is_keyframe
    finally:
        broadcast.call(_unsubscribe(relay, stalled))


async def _unsubscribe(relay, viewer):
    relay.unsubscribe(viewer)


@pytest.mark.slow
def test_an_offer_without_vp8_is_refused_by_name(broadcast):
    async def h264_only():
        watcher = Watcher(broadcast.ws_url)
        try:
            return await watcher.start(video_codecs=("video/H264",))
        finally:
            await watcher.close()

    reply = asyncio.run(h264_only())
    assert reply["type"] == "error" and reply["code"] == "bad_offer" and "VP8" in reply["message"], reply
