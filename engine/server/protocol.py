"""What the page, the Python client and the server say to each other (DESIGN.md §10).

Websocket `/ws`, JSON text messages, one connection per visitor:

    server -> {"type": "hello", "mode": "converse" | "broadcast", "presets": [...], "preset": "balanced",
               "emotions": [...], "max_upload_bytes": N, "controls": {...starting values},
               "viewer_controls": bool, "uploads": bool, "ice_servers": [{"urls": ...}]}
    client -> {"type": "portrait", "data": "<base64 JPEG/PNG/WebP>"}        optional, before the offer
    server -> {"type": "portrait", "width": W, "height": H, "notes": [...]}  or an error
    client -> {"type": "offer", "sdp": "...", "preset": "balanced"}          ICE gathered: aiortc takes no trickle
    server -> {"type": "answer", "sdp": "..."}
    server -> {"type": "error", "code": "...", "message": "..."}            any time; `fatal` ones close the socket

Data channel (created by the client, any label), JSON text messages:

    client -> {"type": "controls", "emotion": "happy", "expressiveness": 1.2, "head_motion": 0.5}
    client -> {"type": "interrupt"}
    client -> {"type": "motion", "enabled": true}                         the motion stream on (false: off)
    server -> {"type": "stats", "latency_ms": ..., "engine_latency_ms": ..., "fps": ..., ...} once a second
    server -> {"type": "motion_names", "blendshapes": ["jawOpen", ...], "head": ["headYaw", ...],
               "fps": 25, "clock": 90000, "decimals": 3, "first_video_pts": P}  once, before the first "motion"
    server -> {"type": "motion", "pts": P, "blendshapes": [0.31, ...], "head": [0.02, ...]}  per video frame
    server -> {"type": "error", "code": "bad_message", "message": "..."}     the channel stays open

The motion stream (Live Link-style, to drive a 3D avatar): once enabled, every video frame this
client's track sends comes with the coefficients it was rendered from, at FPS (sent as the frame goes
to the encoder, so a line usually arrives before its frame is decoded):
ARKit blendshape weights in [0, 1] (ARKit's own names, e.g. "eyeBlink_L") and head pose (yaw, pitch,
roll in radians, x and y in face widths, scale a relative change; engine.motion.spec), in the order
"motion_names" gave, rounded to MOTION_DECIMALS. `pts` is the video frame's own: frame index x 3600
on the 90 kHz RTP clock. `first_video_pts` is the pts of the first video frame sent to this client: a
receiver whose video timestamps start at 0 (aiortc) adds it to line its frames up with these. Frames
that cannot be sent at once (the channel is backed up) are dropped, never queued (stats:
"motion_dropped"); a disabled stream sends nothing more.

Media: the client sends its microphone as an audio track (converse mode; a broadcast viewer sends
none) and receives the avatar's video and the audio it speaks, delayed with it.

Every parse here raises ProtocolError with a code the client can act on and a message a person can
read; nothing a client sends is ever used as a file path, and what it sends is quoted back (in replies
and in the log) only through `quote`, cut to MAX_QUOTE_CHARS.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass

import numpy as np

from engine.motion import spec
from engine.timebase import FPS

MAX_MESSAGE_BYTES = 12 * 2**20  # websocket frames; a base64 portrait of MAX_UPLOAD_BYTES fits
MAX_UPLOAD_BYTES = 8 * 2**20  # a decoded portrait upload
MAX_SDP_CHARS = 64 * 2**10
MAX_CHANNEL_MESSAGE_CHARS = 4096
MAX_QUOTE_CHARS = 64  # of a client's string quoted in an error or a log line (an 11 MiB "type" was echoed whole)
MAX_NAME_CHARS = 64  # a preset name
MOTION_DECIMALS = 3  # of the motion stream's values: 0.001 of a blendshape's range, 0.06 degrees of head rotation
_HEAD = len(spec.BLENDSHAPES)  # the head pose follows the blendshapes in a motion vector
assert spec.NAMES == spec.BLENDSHAPES + spec.HEAD, "the motion stream splits vectors as blendshapes, then head"


class ProtocolError(ValueError):
    """A message the server cannot act on. `code` is machine-readable; str(err) says what to fix."""

    def __init__(self, code: str, message: str, fatal: bool = False):
        super().__init__(message)
        self.code = code
        self.fatal = fatal  # the connection is closed after this error is sent

    def to_message(self) -> str:
        return encode({"type": "error", "code": self.code, "message": str(self)})


@dataclass(frozen=True)
class Offer:
    sdp: str
    preset: str | None


@dataclass(frozen=True)
class PortraitUpload:
    data: bytes


@dataclass(frozen=True)
class SetControls:
    emotion: str | None = None
    expressiveness: float | None = None
    head_motion: float | None = None


@dataclass(frozen=True)
class Interrupt:
    pass


@dataclass(frozen=True)
class SetMotion:
    enabled: bool


def encode(message: dict) -> str:
    return json.dumps(message, separators=(",", ":"))


def quote(value: object, limit: int = MAX_QUOTE_CHARS) -> str:
    """repr() of something a client sent, cut to `limit` characters (with how long it really was)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _load(text: str | bytes, limit: int) -> dict:
    if isinstance(text, bytes):
        raise ProtocolError("bad_message", "binary messages are not accepted; send JSON text")
    if len(text) > limit:
        raise ProtocolError("too_large", f"message of {len(text)} characters is over the limit of {limit}")
    try:
        message = json.loads(text)
    except json.JSONDecodeError as err:
        raise ProtocolError("bad_message", f"message is not JSON ({err.msg} at {err.pos})") from None
    except RecursionError:  # "[[[[..." a few thousand deep: under the size limit, over the parser's stack
        raise ProtocolError("bad_message", "message nests too deeply; send a flat JSON object") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("bad_message", 'message must be a JSON object with a string "type"')
    return message


def parse_signal(text: str | bytes) -> Offer | PortraitUpload:
    """A websocket message from a client."""
    message = _load(text, MAX_MESSAGE_BYTES)
    kind = message["type"]
    if kind == "offer":
        sdp, preset = message.get("sdp"), message.get("preset")
        if not isinstance(sdp, str) or not sdp.startswith("v=0") or len(sdp) > MAX_SDP_CHARS:
            raise ProtocolError("bad_offer", f'"sdp" must be an SDP offer (starting "v=0", at most {MAX_SDP_CHARS} '
                                "characters) with its ICE candidates gathered", fatal=True)
        if preset is not None and (not isinstance(preset, str) or len(preset) > MAX_NAME_CHARS):
            raise ProtocolError("bad_offer", '"preset" must be a preset name', fatal=True)
        return Offer(sdp, preset)
    if kind == "portrait":
        data = message.get("data")
        if not isinstance(data, str):
            raise ProtocolError("bad_portrait", '"data" must be the image file, base64-encoded')
        if len(data) > math.ceil(MAX_UPLOAD_BYTES / 3) * 4:
            raise ProtocolError("too_large", f"portrait is over {MAX_UPLOAD_BYTES // 2**20} MiB; send a smaller photo")
        try:
            return PortraitUpload(base64.b64decode(data, validate=True))
        except (binascii.Error, ValueError):
            raise ProtocolError("bad_portrait", '"data" is not valid base64') from None
    raise ProtocolError("bad_message", f'unknown message type {quote(kind)}; expected "offer" or "portrait"')


def parse_channel(text: str | bytes) -> SetControls | Interrupt | SetMotion:
    """A data-channel message from a client."""
    message = _load(text, MAX_CHANNEL_MESSAGE_CHARS)
    kind = message["type"]
    if kind == "interrupt":
        return Interrupt()
    if kind == "motion":
        enabled = message.get("enabled")
        if not isinstance(enabled, bool) or set(message) != {"type", "enabled"}:
            raise ProtocolError("bad_message", 'a motion message is {"type": "motion", "enabled": true} '
                                f"(or false), nothing else; got keys {quote(sorted(message))}")
        return SetMotion(enabled)
    if kind != "controls":
        raise ProtocolError("bad_message", f'unknown message type {quote(kind)}; '
                            'expected "controls", "interrupt" or "motion"')
    emotion = message.get("emotion")
    if emotion is not None and (not isinstance(emotion, str) or len(emotion) > MAX_NAME_CHARS):
        raise ProtocolError("bad_message", '"emotion" must be an emotion\'s name')
    numbers = {}
    for key in ("expressiveness", "head_motion"):
        value = message.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise ProtocolError("bad_message", f'"{key}" must be a number')
        numbers[key] = None if value is None else float(value)
    unknown = set(message) - {"type", "emotion", "expressiveness", "head_motion"}
    if unknown:
        raise ProtocolError("bad_message", f"unknown controls {quote(sorted(unknown))}; "
                            "known: emotion, expressiveness, head_motion")
    return SetControls(emotion, **numbers)


def motion_names(first_video_pts: int, clock: int) -> dict:
    """The motion stream's header: what the values of every "motion" message are, in order."""
    return {"type": "motion_names", "blendshapes": list(spec.BLENDSHAPES), "head": list(spec.HEAD),
            "fps": FPS, "clock": clock, "decimals": MOTION_DECIMALS, "first_video_pts": first_video_pts}


def motion_frame(pts: int, coeffs: np.ndarray) -> dict:
    """One video frame's motion: (spec.D,) raw coefficients, clamped to their bounds and rounded."""
    values = [round(v, MOTION_DECIMALS) + 0.0 for v in spec.clip(coeffs).tolist()]  # + 0.0: no "-0.0"
    return {"type": "motion", "pts": pts, "blendshapes": values[:_HEAD], "head": values[_HEAD:]}
