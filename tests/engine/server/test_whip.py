"""The WHIP publisher against a real SFU: Janus (VideoRoom) behind simple-whip-server, in a network namespace
this module makes (benchmarks/sfu.py), fed by a real broadcast Session and watched by real aiortc
subscribers through Janus's own API. The request-level errors that need no SFU run without one."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmarks import sfu as local_sfu
from client.janus import JanusSession, wait_for_publisher, watch_room
from engine.cli import main
from engine.server.media import FrameRelay
from engine.server.whip import WhipError, WhipPublisher, WhipTarget, post_offer
from engine.stream import Session, SessionOptions
from engine.timebase import FPS
from tests.engine.stream.harness import small_renderer

SIZE = 128  # small_renderer's


@pytest.fixture(scope="module")
def renderer():
    return small_renderer()


@pytest.fixture(scope="module")
def sfu(tmp_path_factory):
    reason = local_sfu.unavailable()
    if reason:
        pytest.skip(f"no local SFU: {reason}")
    with local_sfu.LocalSfu(tmp_path_factory.mktemp("sfu")) as server:
        yield server


async def _broadcast(renderer, body):
    """Run `body(relay)` with a live broadcast session (the baseline driver, silence in: idle motion)."""
    relay = FrameRelay(Session(renderer, None, "balanced", options=SessionOptions(vad=False)))
    relay.start()
    try:
        return await body(relay)
    finally:
        await relay.close()


@pytest.mark.slow
def test_frames_reach_janus_subscribers_and_close_deletes_the_session(sfu, renderer):
    url = sfu.endpoint("frames", token="s3cret")

    async def body(relay):
        publisher = WhipPublisher(relay, WhipTarget(url, "s3cret"))
        await publisher.start()
        try:
            assert len(relay.viewers) == 1  # the publisher is one subscriber of the broadcast
            watches = await asyncio.gather(*(watch_room(sfu.janus_ws, local_sfu.ROOM, 4.0) for _ in range(2)))
            endpoint = next(e for e in sfu.endpoints() if e["id"] == "frames")
            assert endpoint["enabled"]  # publishing
        finally:
            await publisher.close()
        assert not relay.viewers
        return watches

    watches = asyncio.run(_broadcast(renderer, body))
    for watch in watches:
        # ~4 s at 25 fps, less the join and the first keyframe
        assert watch.video_frames > 2 * FPS and watch.sizes == {(SIZE, SIZE)}, watch
        assert watch.audio_frames > 2 * 50, watch  # 20 ms Opus frames
    # simple-whip-server logs this for a DELETE of the resource (a peer that just goes is "detected as closed")
    assert "[frames] Terminating WHIP session" in sfu.logs()
    assert not next(e for e in sfu.endpoints() if e["id"] == "frames")["enabled"]


@pytest.mark.slow
def test_a_wrong_token_names_the_url_and_the_status(sfu, renderer):
    url = sfu.endpoint("guarded", token="right")

    async def body(relay):
        with pytest.raises(WhipError) as refused:
            await WhipPublisher(relay, WhipTarget(url, "wrong")).start()
        assert not relay.viewers  # the failed try let go of its subscription
        return str(refused.value)

    message = asyncio.run(_broadcast(renderer, body))
    assert url in message and "403" in message and "--whip-token" in message


@pytest.mark.slow
def test_publishes_again_after_the_sfu_hangs_up(sfu, renderer):
    url = sfu.endpoint("again")

    async def body(relay):
        publisher = WhipPublisher(relay, WhipTarget(url), backoff_s=(0.2, 1.0))
        await publisher.start()
        try:
            await _kick(sfu)
            for _ in range(100):  # the hang-up is seen (DTLS close), then a new POST is answered
                if publisher.connections == 2 and publisher.pc is not None:
                    break
                await asyncio.sleep(0.1)
            assert publisher.connections == 2
            return await watch_room(sfu.janus_ws, local_sfu.ROOM, 3.0)
        finally:
            await publisher.close()

    watch = asyncio.run(_broadcast(renderer, body))
    assert watch.video_frames > FPS, watch


@pytest.mark.slow
def test_avatar_live_publishes_its_broadcast(sfu, pulse_source):
    url = sfu.endpoint("cli", token="t0ken")
    command = [sys.executable, "-m", "engine.cli", "live", "--port", str(_closed_port()), "--size", str(SIZE),
               "--driver", "baseline", "--max-sessions", "1", "--publish-whip", url, "--whip-token", "t0ken"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        for line in process.stdout:  # the banner comes once the broadcast is published and the page listens
            lines.append(line)
            if line.startswith("avatar live: open"):
                break
        assert process.poll() is None and f"avatar live: publishing to {url}\n" in lines, \
            "".join(lines) + process.stderr.read()
        watch = asyncio.run(watch_room(sfu.janus_ws, local_sfu.ROOM, 3.0))
    finally:
        process.terminate()
        process.wait(15)
    assert watch.video_frames > FPS and watch.sizes == {(SIZE, SIZE)}, watch
    assert "[cli] Terminating WHIP session" in sfu.logs()  # Ctrl-C (SIGTERM) ends the session with a DELETE


def test_whip_options_are_checked_before_anything_loads(capsys):
    assert main(["live", "--publish-whip", "rtmp://example.org/live"]) == 1
    assert "--publish-whip 'rtmp://example.org/live' is not an http(s) URL" in capsys.readouterr().err
    assert main(["live", "--whip-token", "t"]) == 1
    assert "--whip-token is for --publish-whip" in capsys.readouterr().err


async def _kick(sfu) -> None:
    """Have Janus throw the room's publisher out: its peer connection is hung up from the SFU's side."""
    janus = await JanusSession.open(sfu.janus_ws)
    try:
        feed = await wait_for_publisher(janus, local_sfu.ROOM)
        await janus.request({}, body={"request": "kick", "room": local_sfu.ROOM, "id": feed})
    finally:
        await janus.close()


@pytest.mark.slow
@pytest.mark.browser
def test_the_watch_page_plays_the_room_and_follows_a_republish(sfu, renderer, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is needed: pip install selenium")
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("headless Chromium and its driver are needed: apt-get install chromium chromium-driver")
    from selenium.webdriver.chrome.service import Service

    from tests.client.web.test_browser import CHROMIUM_FLAGS

    loop = asyncio.new_event_loop()  # the broadcast runs here while the test drives the browser
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def call(coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(60)

    async def publish():
        relay = FrameRelay(Session(renderer, None, "balanced", options=SessionOptions(vad=False)))
        relay.start()
        publisher = WhipPublisher(relay, WhipTarget(sfu.endpoint("page")), backoff_s=(0.2, 1.0))
        await publisher.start()
        return relay, publisher

    def frames_after(driver, least: int, timeout_s: float = 20.0) -> int:
        deadline = time.monotonic() + timeout_s
        while (frames := driver.execute_script("return watchState.frames")) < least:
            assert time.monotonic() < deadline, driver.execute_script("return [watchState, " \
                "document.getElementById('status').textContent]")
            time.sleep(0.2)
        return frames

    relay, publisher = call(publish())
    options = webdriver.ChromeOptions()
    for flag in CHROMIUM_FLAGS + (f"--user-data-dir={tmp_path / 'chromium'}",):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(f"http://{sfu.sfu_ip}:{local_sfu.WHIP_PORT}/watch.html")  # run.sh serves it
        shown = frames_after(driver, 2 * FPS)
        call(_kick(sfu))  # the publisher comes back with a new POST; the page finds the new feed
        frames_after(driver, shown + 2 * FPS, timeout_s=30)
        assert publisher.connections == 2
    finally:
        driver.quit()
        call(publisher.close())
        call(relay.close())
        loop.call_soon_threadsafe(loop.stop)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_endpoint_is_named():
    url = f"http://127.0.0.1:{_closed_port()}/whip/endpoint/x"

    async def body():
        relay = FrameRelay(None)  # never started: the POST fails before anything is sent
        with pytest.raises(WhipError) as refused:
            await WhipPublisher(relay, WhipTarget(url)).start()
        return str(refused.value), relay.viewers

    message, viewers = asyncio.run(body())
    assert url in message and "cannot be reached" in message and not viewers


def test_only_http_urls_are_taken():
    with pytest.raises(ValueError, match="not an http"):
        WhipTarget("rtmp://example.org/live")


@pytest.fixture
def misbehaving():
    """A local HTTP server standing in for WHIP endpoints that answer wrongly (no real SFU can be made to):
    the path picks the reply. Yields its base URL; records the requests' headers."""
    replies = {
        "/no-location": (201, {}, "v=0\r\n"),
        "/not-sdp": (201, {"Location": "/r/1"}, "<html>welcome</html>"),
        "/bad-sdp": (201, {"Location": "/r/1"}, "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"),
        "/broken": (500, {}, "janus unavailable"),
    }
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(dict(self.headers))
            status, headers, body = replies[self.path]
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


@pytest.mark.parametrize("path, says", [
    ("/no-location", "without a Location header"),
    ("/not-sdp", "is not an SDP answer"),
    ("/bad-sdp", "cannot use"),
    ("/broken", "answered 500 (janus unavailable)"),
])
def test_a_wrong_answer_names_the_url_and_what_was_wrong(misbehaving, path, says):
    base, seen = misbehaving
    url = base + path

    async def body():
        relay = FrameRelay(None)  # never started: nothing is sent before the answer is applied
        with pytest.raises(WhipError) as refused:
            await WhipPublisher(relay, WhipTarget(url, "t")).start()
        return str(refused.value), relay.viewers

    message, viewers = asyncio.run(body())
    assert url in message and says in message and not viewers
    assert seen[-1]["Content-Type"] == "application/sdp" and seen[-1]["Authorization"] == "Bearer t"


def test_the_location_is_resolved_against_the_endpoint(misbehaving):
    base, _ = misbehaving
    resource, answer = asyncio.run(post_offer(WhipTarget(base + "/bad-sdp"), "v=0\r\n"))
    assert resource == base + "/r/1" and answer.startswith("v=0")
