"""The motion stream's feed on a real aiortc data channel (two peers over loopback): names once, one line per
shown frame while enabled, and a backed-up channel drops lines instead of queueing them."""

import asyncio
import json

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection

from engine.frames import LiveFrame
from engine.motion import spec
from engine.server.motion import MAX_BUFFERED_BYTES, MotionFeed


def _frame(n: int) -> LiveFrame:
    return LiveFrame(n, np.zeros((4, 4, 3), np.uint8), motion=spec.from_dict({"jawOpen": n / 100}))


async def _until(condition, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def _feed_over_a_channel() -> tuple[MotionFeed, list, list]:
    server, client = (RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(2))
    received = []
    client.createDataChannel("avatar").on("message", lambda m: received.append(json.loads(m)) if isinstance(m, str)
                                          else None)
    channels = []
    server.on("datachannel", channels.append)
    await client.setLocalDescription(await client.createOffer())
    await server.setRemoteDescription(client.localDescription)
    await server.setLocalDescription(await server.createAnswer())
    await client.setRemoteDescription(server.localDescription)
    await _until(lambda: channels and channels[0].readyState == "open")
    channel = channels[0]

    feed = MotionFeed(ticks_per_frame=3600, clock=90000)
    feed.channel = channel
    feed.shown(_frame(0))  # not asked for yet: nothing is sent (but this is the first frame the viewer saw)
    feed.enabled = True
    for _ in range(8):  # a channel backed up (a slow client, a bad network)
        channel.send(b"\0" * (8 * MAX_BUFFERED_BYTES))
    dropped_at = []
    for n in range(1, 11):
        feed.shown(_frame(n))
        dropped_at.append(feed.dropped)
    await _until(lambda: channel.bufferedAmount == 0)
    for n in range(11, 21):
        feed.shown(_frame(n))
    feed.enabled = False
    feed.shown(_frame(21))
    await _until(lambda: len(received) >= 11)
    await asyncio.sleep(0.2)  # anything sent by mistake after disabling would be here by now
    await client.close()
    await server.close()
    return feed, received, dropped_at


def test_lines_while_enabled_and_drops_while_backed_up():
    feed, received, dropped_at = asyncio.run(_feed_over_a_channel())
    assert dropped_at == list(range(1, 11))  # each line that found the channel backed up was dropped at once
    assert (feed.sent, feed.dropped) == (10, 10)
    names, *lines = received
    assert names["type"] == "motion_names" and names["first_video_pts"] == 0 and names["clock"] == 90000
    assert names["blendshapes"] == list(spec.BLENDSHAPES) and names["head"] == list(spec.HEAD)
    assert [line["pts"] for line in lines] == [n * 3600 for n in range(11, 21)]
    assert [line["blendshapes"][spec.index("jawOpen")] for line in lines] == [n / 100 for n in range(11, 21)]
