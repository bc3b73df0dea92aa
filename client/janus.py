"""Watching a Janus VideoRoom from Python: the subscriber side of a stream published over WHIP.

`watch_room(ws_url, room)` talks Janus's JSON API over its WebSocket transport (subprotocol
`janus-protocol`): create a session, attach the VideoRoom plugin, wait for the room's publisher, join as
its subscriber, answer the offer Janus sends with a real aiortc peer, and count the decoded frames. It is
what client/web/watch.html does in a browser, for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import av
import websockets
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

KEEPALIVE_S = 25.0  # Janus drops a session silent for 60 s (its session_timeout)


class JanusError(RuntimeError):
    """Janus answered a request with an error (the message quotes it)."""


class JanusSession:
    """One Janus API session over one WebSocket, with one VideoRoom handle."""

    def __init__(self, ws):
        self.ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[str, asyncio.Future] = {}
        self.session_id = self.handle_id = None
        self._reader = asyncio.create_task(self._read())
        self._keepalive: asyncio.Task | None = None

    @classmethod
    async def open(cls, ws_url: str) -> JanusSession:
        ws = await websockets.connect(ws_url, subprotocols=["janus-protocol"])
        janus = cls(ws)
        janus.session_id = (await janus.request({"janus": "create"}))["data"]["id"]
        janus.handle_id = (await janus.request({"janus": "attach", "plugin": "janus.plugin.videoroom"}))["data"]["id"]
        janus._keepalive = asyncio.create_task(janus._keep_alive())
        return janus

    async def _read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            kind = message.get("janus")
            if kind == "ack":  # an async request was taken; its answer comes as an event
                continue
            future = self._waiting.pop(message.get("transaction"), None)  # unsolicited events are not needed
            if future is not None and not future.done():
                future.set_result(message)

    async def request(self, message: dict, body: dict | None = None, jsep: dict | None = None) -> dict:
        """Send one request and return Janus's answer to it (its event, for an async plugin request)."""
        transaction = str(next(self._ids))
        message = {**message, "transaction": transaction}
        if self.session_id is not None:
            message["session_id"] = self.session_id
        if body is not None:
            message.update(janus="message", handle_id=self.handle_id, body=body)
        if jsep is not None:
            message["jsep"] = jsep
        future = asyncio.get_running_loop().create_future()
        self._waiting[transaction] = future
        await self.ws.send(json.dumps(message))
        answer = await asyncio.wait_for(future, 10)
        error = answer.get("error") or answer.get("plugindata", {}).get("data", {}).get("error")
        if answer.get("janus") == "error" or error:
            raise JanusError(f"Janus refused {body['request'] if body else message['janus']}: {error}")
        return answer

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_S)
            await self.ws.send(json.dumps({"janus": "keepalive", "session_id": self.session_id,
                                           "transaction": str(next(self._ids))}))

    async def close(self) -> None:
        for task in (self._keepalive, self._reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                    await task
        with contextlib.suppress(websockets.ConnectionClosed):
            await self.ws.send(json.dumps({"janus": "destroy", "session_id": self.session_id, "transaction": "end"}))
        await self.ws.close()


async def wait_for_publisher(janus: JanusSession, room: int, timeout_s: float = 15.0) -> int:
    """The feed id of the room's first publisher, once there is one."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = await janus.request({}, body={"request": "listparticipants", "room": room})
        feeds = [p["id"] for p in answer["plugindata"]["data"]["participants"] if p.get("publisher")]
        if feeds:
            return feeds[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"no publisher in Janus room {room} after {timeout_s:.0f} s")
        await asyncio.sleep(0.2)


@dataclass
class Watch:
    """What one subscriber received."""

    video_frames: int = 0  # decoded
    audio_frames: int = 0
    sizes: set[tuple[int, int]] = field(default_factory=set)  # decoded video sizes
    first_frame_s: float | None = None  # seconds from joining to the first decoded video frame


async def watch_room(ws_url: str, room: int, seconds: float,
                     on_video: Callable[[av.VideoFrame], None] | None = None) -> Watch:
    """Subscribe to the room's publisher for `seconds` and count what arrives."""
    janus = await JanusSession.open(ws_url)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    watch, started = Watch(), time.monotonic()
    consumers = []

    async def consume(track):
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if track.kind == "video":
                watch.video_frames += 1
                watch.sizes.add((frame.width, frame.height))
                if watch.first_frame_s is None:
                    watch.first_frame_s = time.monotonic() - started
                if on_video is not None:
                    on_video(frame)
            else:
                watch.audio_frames += 1

    pc.on("track", lambda track: consumers.append(asyncio.create_task(consume(track))))
    try:
        feed = await wait_for_publisher(janus, room)
        offer = await janus.request({}, body={"request": "join", "ptype": "subscriber", "room": room, "feed": feed})
        await pc.setRemoteDescription(RTCSessionDescription(offer["jsep"]["sdp"], "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await janus.request({}, body={"request": "start", "room": room},
                            jsep={"type": "answer", "sdp": pc.localDescription.sdp})
        await asyncio.sleep(seconds - (time.monotonic() - started))
    finally:
        await pc.close()
        for task in consumers:
            task.cancel()
        await janus.close()
    return watch
