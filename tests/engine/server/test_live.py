"""`avatar live` end to end: a real PulseAudio virtual microphone feeds the command (sounddevice and
PortAudio underneath), one session is relayed to viewers (real aiortc peers), and the viewers see the
mouth move while the microphone speaks and rest when it is silent."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from client.peer import ClientOptions, run_client
from engine import assets
from engine.audio.io import load_audio
from engine.timebase import FPS, SAMPLE_RATE
from tests.engine.server.serving import MouthMotion

pytestmark = pytest.mark.slow
SIZE = 128


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live(pulse_source):
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "live", "--port", str(port), "--size", str(SIZE), "--max-sessions", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in process.stdout:  # the banner comes once the mic is open and the port listens
            lines.append(line)
            if line.startswith("avatar live: open"):
                break
        assert process.poll() is None, "".join(lines) + process.stderr.read()
        yield f"ws://127.0.0.1:{port}/ws", pulse_source, lines
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


def test_viewers_see_the_microphone_speak(live, tmp_path):
    """...and the first viewer also takes the motion stream: a viewer may ask for it (it steers nothing)."""
    url, mic, banner = live
    assert any("listening to" in line for line in banner)
    speech = load_audio(assets.SAMPLE_SPEECH)[: 4 * SAMPLE_RATE]
    mouths = [MouthMotion(SIZE), MouthMotion(SIZE)]
    video_pts = []

    def first_viewer(frame, arrival):
        video_pts.append(frame.pts)
        mouths[0].on_video(frame, arrival)

    async def joining_mid_stream():  # a connect can beat the broadcast's first frame; this one comes later
        await asyncio.sleep(0.5)
        return await run_client(url, ClientOptions(seconds=10, record_motion=tmp_path / "motion.jsonl"),
                                on_video=first_viewer)

    async def two_viewers():
        return await asyncio.gather(joining_mid_stream(),
                                    run_client(url, ClientOptions(seconds=10), on_video=mouths[1].on_video))

    fed = time.monotonic()  # the windows below count from here, so a slow connect cannot shift them
    mic.feed(np.concatenate([speech, np.zeros(6 * SAMPLE_RATE)]))  # 4 s of speech, then 6 s of silence
    reports = asyncio.run(two_viewers())
    for report, mouth in zip(reports, mouths):
        assert report.mode == "broadcast" and report.frames > 9 * FPS and report.fps >= 24, report.summary()
        # Through VP8 at 128 px the mouth changes ~6 grey levels a frame while speech plays; it settles
        # over ~2.5 s once it stops (head motion eases out), then rests at ~1 (codec noise, idle motion).
        speaking, resting = mouth.between(1.0, 3.5, fed), mouth.between(7.5, 9.5, fed)
        assert speaking > 3 * resting, (speaking, resting)
        assert report.server_stats["viewers"] == 2
    # The broadcast was running before this viewer came: its video starts mid-stream, and first_video_pts
    # puts its frames (decoded from pts 0) on the stream's timeline, where the motion lines are.
    assert not reports[0].errors and reports[0].motion_frames > 8 * FPS and reports[0].motion_fps >= 24
    header, *lines = [json.loads(line) for line in (tmp_path / "motion.jsonl").read_text().splitlines()]
    motion_pts = {line["pts"] for line in lines}
    shown = {pts + header["first_video_pts"] for pts in video_pts}
    assert header["first_video_pts"] > 0 and min(motion_pts) >= header["first_video_pts"]
    assert {pts for pts in shown if pts >= min(motion_pts)} <= motion_pts


def test_viewers_cannot_steer_a_broadcast(live):
    url, _, _ = live
    report = asyncio.run(run_client(url, ClientOptions(seconds=2, controls={"emotion": "happy"})))
    assert any(e.startswith("read_only") for e in report.errors) and report.frames > FPS


def test_a_missing_input_device_is_named(pulse_source):
    done = subprocess.run([sys.executable, "-m", "engine.cli", "live", "--input-device", "no such mic"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "no such mic" in done.stderr and "pulse" in done.stderr


def test_list_devices(pulse_source):
    done = subprocess.run([sys.executable, "-m", "engine.cli", "live", "--list-devices"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "pulse" in done.stdout
