"""The signaling and data-channel messages: what is accepted, and the error a client gets otherwise."""

import base64
import json

import pytest

from engine.motion import spec
from engine.server import protocol
from engine.server.protocol import Interrupt, Offer, PortraitUpload, ProtocolError, SetControls, SetMotion

SDP = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\n"


def test_offers_and_portraits_parse():
    assert protocol.parse_signal(json.dumps({"type": "offer", "sdp": SDP})) == Offer(SDP, None)
    assert protocol.parse_signal(json.dumps({"type": "offer", "sdp": SDP, "preset": "quality"})).preset == "quality"
    data = base64.b64encode(b"\x89PNG\r\n\x1a\n...").decode()
    assert protocol.parse_signal(json.dumps({"type": "portrait", "data": data})) == PortraitUpload(b"\x89PNG\r\n\x1a\n...")


@pytest.mark.parametrize("message, code, fatal", [
    ("not json", "bad_message", False),
    (b"\x00\x01", "bad_message", False),
    ("[1, 2]", "bad_message", False),
    ('{"type": "hack"}', "bad_message", False),
    ('{"type": "offer", "sdp": "hello"}', "bad_offer", True),
    ('{"type": "offer"}', "bad_offer", True),
    ('{"type": "offer", "sdp": "v=0", "preset": 3}', "bad_offer", True),
    ('{"type": "portrait", "data": "***"}', "bad_portrait", False),
    ('{"type": "portrait", "data": 5}', "bad_portrait", False),
])
def test_bad_signals_get_a_code_and_a_readable_message(message, code, fatal):
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_signal(message)
    assert caught.value.code == code and caught.value.fatal == fatal
    reply = json.loads(caught.value.to_message())
    assert reply == {"type": "error", "code": code, "message": str(caught.value)} and len(reply["message"]) > 15


def test_oversized_portraits_are_refused_before_decoding():
    big = "A" * (protocol.MAX_UPLOAD_BYTES // 3 * 4 + 8)
    with pytest.raises(ProtocolError, match="MiB") as caught:
        protocol.parse_signal(json.dumps({"type": "portrait", "data": big}))
    assert caught.value.code == "too_large"


def test_channel_messages():
    assert protocol.parse_channel('{"type": "interrupt"}') == Interrupt()
    assert protocol.parse_channel('{"type": "controls", "emotion": "happy", "head_motion": 2}') == \
        SetControls("happy", None, 2.0)
    for bad, match in [('{"type": "controls", "expressiveness": "max"}', "must be a number"),
                       ('{"type": "controls", "expressiveness": true}', "must be a number"),
                       ('{"type": "controls", "volume": 3}', "unknown controls"),
                       ('{"type": "controls", "emotion": 7}', "must be an emotion"),
                       ('{"type": "dance"}', "unknown message type"),
                       ('{"type": "motion"}', '"enabled": true'),
                       ('{"type": "motion", "enabled": 1}', '"enabled": true'),
                       ('{"type": "motion", "enabled": "yes"}', '"enabled": true'),
                       ('{"type": "motion", "enabled": true, "rate": 60}', "rate"),
                       ("{" * 5000, "over the limit")]:
        with pytest.raises(ProtocolError, match=match) as caught:
            protocol.parse_channel(bad)
        assert caught.value.code in ("bad_message", "too_large") and not caught.value.fatal


def test_motion_toggles_and_lines():
    assert protocol.parse_channel('{"type": "motion", "enabled": true}') == SetMotion(True)
    assert protocol.parse_channel('{"type": "motion", "enabled": false}') == SetMotion(False)
    names = protocol.motion_names(first_video_pts=7200, clock=90000)
    assert names["blendshapes"][:2] == ["jawOpen", "jawLeft"] and "eyeBlink_L" in names["blendshapes"]
    assert names["head"] == ["headYaw", "headPitch", "headRoll", "headX", "headY", "headScale"]
    coeffs = spec.from_dict({"jawOpen": 0.123456, "eyeBlink_L": 1.7, "headYaw": -0.0001, "headRoll": 0.25})
    line = json.loads(protocol.encode(protocol.motion_frame(3600, coeffs)))
    values = dict(zip(names["blendshapes"] + names["head"], line["blendshapes"] + line["head"]))
    assert line["pts"] == 3600 and len(values) == spec.D
    # rounded to MOTION_DECIMALS, clamped to the coefficient's bounds, no "-0.0"
    assert values["jawOpen"] == 0.123 and values["eyeBlink_L"] == 1.0 and values["headRoll"] == 0.25
    assert str(values["headYaw"]) == "0.0"


def test_deep_nesting_is_a_bad_message_not_a_crash():
    """4,080 nested brackets fit the data channel's 4,096-character limit but not the JSON parser's stack:
    the RecursionError killed the visitor's own stream."""
    for parse, depth in [(protocol.parse_channel, 4080), (protocol.parse_signal, 100_000)]:
        with pytest.raises(ProtocolError, match="nests too deeply") as caught:
            parse("[" * depth)
        assert caught.value.code == "bad_message"


def test_client_strings_are_quoted_short():
    """An 11 MiB "type" was sent back and logged whole."""
    huge = "x" * (11 * 2**20)
    for parse, message in [(protocol.parse_signal, {"type": huge}), (protocol.parse_channel, {"type": huge[:4000]}),
                           (protocol.parse_channel, {"type": "controls", huge[:4000]: 1})]:
        with pytest.raises(ProtocolError) as caught:
            parse(json.dumps(message))
        assert len(caught.value.to_message()) < 300 and "characters)" in str(caught.value)
    with pytest.raises(ProtocolError, match="preset name"):
        protocol.parse_signal(json.dumps({"type": "offer", "sdp": SDP, "preset": "p" * 65}))
