"""The Python client: connects to `avatar serve` / `avatar live` as the page does, sends audio,
records the avatar it gets back and measures what a viewer would see.

    report = asyncio.run(run_client("ws://127.0.0.1:8080/ws", ClientOptions(audio="speech.wav", record="out.mp4")))

What it measures (ClientReport):
- time to first frame: the offer sent -> the first video frame decoded;
- received fps over the stream, and the longest gap between frames;
- A/V offset of the returned stream: each video frame's arrival minus the arrival of the audio with
  the same media time (both tracks stamp pts from the server's frame index, so the media times
  line up), less aiortc's extra audio buffering (RECEIVE_SKEW_S); median over frames, and its
  drift (last quarter minus first quarter);
- latency estimate: the audio comes back delayed with the face, so the lag that best aligns the
  energy of the audio sent with the audio received is the round trip a speaker sees;
- the server's own stats (engine latency, drops) from the data channel;
- with `record_motion`, the motion stream (engine.server.protocol, "motion"): frames and their rate.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from websockets.asyncio.client import connect

from client.record import MotionRecorder, Recorder
from engine.audio.io import load_audio
from engine.timebase import SAMPLE_RATE
from client.tracks import FileAudioTrack, MicAudioTrack
from engine.server.media import frame_samples  # imported up front: importing torch mid-stream stalled our loop 1.5 s

# aiortc's receivers hold audio longer than video before decoding: audio until 4 more Opus packets
# (20 ms each) are in, video until the next frame's first packet (40 ms). Arrival times at our
# decoders therefore show audio 40 ms late however the server sent it; the offset is corrected for it.
RECEIVE_SKEW_S = 4 * 0.020 - 0.040
ENVELOPE_HZ = 100  # energy envelope rate for the latency estimate
MAX_LATENCY_S = 2.0  # the longest round trip the estimate searches


class ClientError(RuntimeError):
    """The server refused us or the connection failed; the message says why (the server's own words)."""


@dataclass(frozen=True)
class ClientOptions:
    audio: str | Path | None = None  # a speech file to send in real time (None with mic=False: silence)
    seconds: float | None = None  # stop after this long (default: the file plus tail_s)
    tail_s: float = 2.0  # silence sent after the file, so its last words come back
    mic: bool = False  # send this machine's microphone instead (engine.audio.mic)
    input_device: str | None = None
    record: str | Path | None = None  # MP4 of what comes back
    record_motion: str | Path | None = None  # ask for the motion stream and write it here (JSON lines)
    portrait: str | Path | None = None  # upload this photo first
    preset: str | None = None
    controls: dict = field(default_factory=dict)  # sent on the data channel once it opens
    connect_timeout_s: float = 20.0


@dataclass
class ClientReport:
    mode: str = ""
    time_to_first_frame_s: float | None = None
    frames: int = 0
    duration_s: float = 0.0  # first to last video frame
    fps: float | None = None
    max_gap_s: float | None = None
    av_offset_s: float | None = None  # video minus audio arrival at equal media time (median)
    av_offset_drift_s: float | None = None  # last quarter minus first quarter of the stream
    latency_estimate_s: float | None = None  # the sent audio coming back (round trip)
    server_stats: dict | None = None  # the last stats message
    errors: list = field(default_factory=list)  # error messages the server sent on the data channel
    recorded: str | None = None
    motion_frames: int = 0  # "motion" messages received
    motion_fps: float | None = None  # their arrival rate, first to last
    recorded_motion: str | None = None

    def summary(self) -> str:
        def ms(v):
            return "n/a" if v is None else f"{v * 1000:+.0f} ms" if v < 0 else f"{v * 1000:.0f} ms"

        s = self.server_stats or {}
        lines = [
            f"first frame {ms(self.time_to_first_frame_s)} after the offer",
            f"received {self.frames} frames in {self.duration_s:.1f} s: "
            f"{self.fps or 0:.1f} fps (longest gap {ms(self.max_gap_s)})",
            f"A/V offset of the returned stream {ms(self.av_offset_s)} (drift {ms(self.av_offset_drift_s)})",
            f"latency estimate (your audio back with the face) {ms(self.latency_estimate_s)}; server: engine "
            f"latency p50 {s.get('engine_latency_ms', 'n/a')} ms, p95 {s.get('engine_latency_p95_ms', 'n/a')} ms, "
            f"floor {s.get('floor_ms', 'n/a')} ms, dropped {s.get('frames_dropped', 'n/a')}",
        ]
        if self.recorded:
            lines.append(f"recorded {self.recorded}")
        if self.recorded_motion:
            lines.append(f"recorded the motion of {self.motion_frames} frames ({self.motion_fps or 0:.1f} a second) "
                         f"in {self.recorded_motion}")
        lines += [f"server error: {e}" for e in self.errors]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


async def _expect(ws, kind: str) -> dict:
    message = json.loads(await ws.recv())
    if message.get("type") == "error":
        raise ClientError(f"server refused ({message.get('code')}): {message.get('message')}")
    if message.get("type") != kind:
        raise ClientError(f"expected a {kind!r} message from the server, got {message.get('type')!r}")
    return message


async def run_client(url: str, options: ClientOptions = ClientOptions(),
                     on_video: Callable[[av.VideoFrame, float], None] | None = None,
                     on_motion: Callable[[dict, float], None] | None = None) -> ClientReport:
    """Connect, stream, measure; `on_video(frame, arrival)` sees every decoded video frame, and
    `on_motion(message, arrival)` every "motion" message (with `options.record_motion`)."""
    report = ClientReport()
    loop = asyncio.get_running_loop()
    video_times: list[tuple[int, float]] = []  # (pts in 90 kHz ticks, arrival)
    audio_times: list[tuple[int, float, np.ndarray]] = []  # (pts in samples, arrival, mono samples)
    recorder = Recorder(options.record) if options.record else None
    motion = MotionRecorder(options.record_motion) if options.record_motion else None
    motion_times: list[float] = []  # arrivals of "motion" messages
    tasks: list[asyncio.Task] = []
    mic = None

    async with connect(url, max_size=None, open_timeout=options.connect_timeout_s) as ws:
        hello = await _expect(ws, "hello")
        report.mode = hello["mode"]
        if options.portrait is not None:
            data = base64.b64encode(Path(options.portrait).read_bytes()).decode()
            await ws.send(json.dumps({"type": "portrait", "data": data}))
            await _expect(ws, "portrait")
        servers = [RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
                   for s in hello.get("ice_servers", [])]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        sender = None
        if report.mode == "broadcast":
            pc.addTransceiver("audio", direction="recvonly")
        elif options.mic:
            from engine.audio.mic import Microphone

            mic = Microphone(lambda samples, rate: sender.on_audio(samples, rate), device=options.input_device)
            sender = MicAudioTrack(loop, mic.sample_rate)
            pc.addTrack(sender)
        else:
            sender = FileAudioTrack(*_load(options.audio), tail_s=options.tail_s)
            pc.addTrack(sender)
        pc.addTransceiver("video", direction="recvonly")
        channel = pc.createDataChannel("avatar")

        @channel.on("open")
        def _open():
            if options.controls:
                channel.send(json.dumps({"type": "controls", **options.controls}))
            if motion is not None:
                channel.send(json.dumps({"type": "motion", "enabled": True}))

        @channel.on("message")
        def _message(text):
            message = json.loads(text)
            if message.get("type") == "stats":
                report.server_stats = message
            elif message.get("type") == "error":
                report.errors.append(f"{message.get('code')}: {message.get('message')}")
            elif message.get("type") in ("motion_names", "motion") and motion is not None:
                if message["type"] == "motion":
                    motion_times.append(time.monotonic())
                    if on_motion is not None:
                        on_motion(message, motion_times[-1])
                motion.add(message)

        first_frame = asyncio.Event()

        async def take(track):
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                now = time.monotonic()
                if track.kind == "video":
                    video_times.append((frame.pts, now))
                    first_frame.set()
                    if on_video is not None:
                        on_video(frame, now)
                else:
                    audio_times.append((frame.pts, now, _mono(frame)))
                if recorder is not None:
                    recorder.add(frame)

        pc.on("track", lambda track: tasks.append(asyncio.create_task(take(track))))
        await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers ICE here: no trickle
        offered = time.monotonic()
        await ws.send(json.dumps({"type": "offer", "sdp": pc.localDescription.sdp, "preset": options.preset}))
        answer = await _expect(ws, "answer")
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        if mic is not None:
            mic.start()
        try:
            await asyncio.wait_for(first_frame.wait(), options.connect_timeout_s)
        except TimeoutError:
            raise ClientError(f"no video within {options.connect_timeout_s:.0f} s of the offer "
                              f"(peer connection {pc.connectionState})") from None
        report.time_to_first_frame_s = video_times[0][1] - offered
        duration = options.seconds
        if duration is None and isinstance(sender, FileAudioTrack):
            while not sender.done:
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # the end of the tail reaching us
        else:
            await asyncio.sleep(max(0.0, (duration or 10.0) - (time.monotonic() - offered)))
        if mic is not None:
            mic.close()
        await pc.close()
        for task in tasks:
            task.cancel()
    if recorder is not None:
        report.recorded = recorder.close()
    if motion is not None:
        report.recorded_motion = motion.close()
        report.motion_frames = len(motion_times)
        if len(motion_times) > 1:
            report.motion_fps = (len(motion_times) - 1) / (motion_times[-1] - motion_times[0])
    _measure(report, video_times, audio_times, sender if isinstance(sender, FileAudioTrack) else None)
    return report


def _load(path) -> tuple[np.ndarray, int]:
    """The file as 16 kHz mono (None: 5 s of silence)."""
    return (np.zeros(SAMPLE_RATE * 5, np.float32) if path is None else load_audio(path)), SAMPLE_RATE


def _mono(frame) -> np.ndarray:
    samples = frame_samples(frame).astype(np.float32)
    if frame.format.name.startswith("s16"):
        samples /= 32768
    return samples.mean(axis=1)


def _measure(report: ClientReport, video: list, audio: list, sent: FileAudioTrack | None) -> None:
    if len(video) < 2:
        report.frames = len(video)
        return
    arrivals = np.array([t for _, t in video])
    report.frames = len(video)
    report.duration_s = float(arrivals[-1] - arrivals[0])
    report.fps = (len(video) - 1) / report.duration_s
    report.max_gap_s = float(np.diff(arrivals).max())
    if len(audio) < 2:
        return
    rate = 48000  # Opus always decodes at 48 kHz
    a_media = np.array([p - audio[0][0] for p, _, _ in audio], float) / rate
    a_arrival = np.array([t for _, t, _ in audio])
    v_media = np.array([p - video[0][0] for p, _ in video], float) / 90000
    inside = v_media <= a_media[-1]
    offsets = arrivals[inside] - np.interp(v_media[inside], a_media, a_arrival - RECEIVE_SKEW_S)
    if len(offsets) >= 8:
        q = len(offsets) // 4
        report.av_offset_s = float(np.median(offsets))
        report.av_offset_drift_s = float(np.median(offsets[-q:]) - np.median(offsets[:q]))
    if sent is not None and sent.started is not None:
        # The received audio laid out by its pts (gaps stay gaps), placed on the wall clock by the median
        # of arrival minus media time: bursts and one-off stalls in delivery do not move it.
        received = np.zeros(int(a_media[-1] * rate) + len(audio[-1][2]), np.float32)
        for (_, _, samples), start in zip(audio, (a_media * rate).astype(int)):
            received[start: start + len(samples)] = samples
        origin = float(np.median(a_arrival - a_media))
        report.latency_estimate_s = _echo_lag(sent.samples, sent.rate, sent.started, received, rate, origin)


def _envelope(samples: np.ndarray, rate: int) -> np.ndarray:
    hop = rate // ENVELOPE_HZ
    n = len(samples) // hop
    return np.sqrt((samples[: n * hop].reshape(n, hop) ** 2).mean(axis=1) + 1e-10)


def _echo_lag(sent: np.ndarray, sent_rate: int, sent_start: float, received: np.ndarray, received_rate: int,
              received_start: float) -> float | None:
    """Seconds from sending audio to receiving it back: the best-aligning lag of the energy envelopes
    (log, zero-mean), on the wall clock (each stream placed at the time its first sample was sent/got)."""
    a, b = np.log(_envelope(sent, sent_rate)), np.log(_envelope(received, received_rate))
    if a.std() < 1e-3 or b.std() < 1e-3:
        return None  # silence both ways: nothing to align
    a, b = a - a.mean(), b - b.mean()
    base = received_start - sent_start  # lag of b's start relative to a's, in seconds
    best, best_lag = -np.inf, None
    for shift in range(-int(MAX_LATENCY_S * ENVELOPE_HZ), int(MAX_LATENCY_S * ENVELOPE_HZ)):
        # b[i] arrived at received_start + i/100; it matches a[j] with j = i + shift
        lo, hi = max(0, -shift), min(len(b), len(a) - shift)
        if hi - lo < ENVELOPE_HZ:
            continue
        score = float(np.dot(a[lo + shift: hi + shift], b[lo:hi]) / (hi - lo))
        if score > best:
            best, best_lag = score, shift
    return None if best_lag is None else base - best_lag / ENVELOPE_HZ
