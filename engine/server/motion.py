"""The motion stream out (engine.server.protocol, "motion"): one viewer's coefficients on its data channel.

`shown(frame)` is called for every frame the viewer's video track hands to its encoder, so the client
gets the motion of exactly the frames it is shown, each with that frame's pts. Drop policy: a line that
finds more than MAX_BUFFERED_BYTES waiting on the channel (a slow or stalled client) is dropped and
counted, never queued, so the channel's memory stays bounded and nothing waits on it.
"""

from __future__ import annotations

from engine.frames import LiveFrame
from engine.server import protocol

MAX_BUFFERED_BYTES = 8 * 2**10  # about a second of motion lines (~300 bytes each, 25 a second)


class MotionFeed:
    """Sends `protocol.motion_names` once, then `protocol.motion_frame` per shown frame, while enabled."""

    def __init__(self, ticks_per_frame: int, clock: int):
        self.ticks_per_frame, self.clock = ticks_per_frame, clock  # the video track's pts scale
        self.channel = None  # the client's data channel, once it has one
        self.enabled = False
        self.sent = self.dropped = 0
        self._first_pts: int | None = None  # of the first video frame sent to this viewer
        self._named = False

    def shown(self, frame: LiveFrame) -> None:
        pts = frame.pts * self.ticks_per_frame
        if self._first_pts is None:
            self._first_pts = pts
        channel = self.channel
        if not self.enabled or frame.motion is None or channel is None or channel.readyState != "open":
            return
        if channel.bufferedAmount > MAX_BUFFERED_BYTES:
            self.dropped += 1
            return
        if not self._named:
            channel.send(protocol.encode(protocol.motion_names(self._first_pts, self.clock)))
            self._named = True
        channel.send(protocol.encode(protocol.motion_frame(pts, frame.motion)))
        self.sent += 1
