"""The page (client/web) in real headless Chromium against a real server (DESIGN.md §10, §13).

Chromium's fake microphone plays a WAV once: silence, the bundled speech, then silence. The test
watches the video the page shows, as a viewer would: it draws every shown frame's mouth region to a
canvas and measures how much it changed since the previous frame. The mouth must move while the WAV
speaks and rest once it is silent.
"""

from __future__ import annotations

import json
import shutil
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from engine import assets
from engine.audio.io import load_audio
from engine.motion.choice import Baseline
from engine.server.app import Broadcast, ServerConfig
from engine.server.protocol import MAX_UPLOAD_BYTES
from engine.timebase import FPS, SAMPLE_RATE
from tests.engine.server.serving import ServerThread, mouth_box

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SIZE = 128  # the mouth is ~20 px wide: plenty for the canvas, light on two busy cores
PRESET = "balanced" if assets.FAST_MOTION.is_file() else "quality"  # the live presets need motion_fast
LEAD_S, TAIL_S = 2.0, 6.0  # silence before and after the speech in the fake microphone
SETTLE_S = 1.5  # after the speech ends: the face's latency plus its easing back to rest
CHROMIUM_FLAGS = (  # DESIGN.md §13
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
)

# Installed in the page before Start: for every frame the video element shows, the mean absolute
# change of the mouth crop (grey levels) since the previous frame, timed from installation.
MOUTH_SAMPLER = """
const [x0, y0, x1, y1] = arguments[0];  // the mouth box, fractions of the frame
const W = 48, H = 32;  // the crop is resampled to this
const video = document.getElementById("video");
const canvas = Object.assign(document.createElement("canvas"), {width: W, height: H});
const ctx = canvas.getContext("2d", {willReadFrequently: true});
const t0 = performance.now();
const samples = window.mouthSamples = [];  // [seconds since installation, change or null]
let previous = null;
const onFrame = (now) => {
  const vw = video.videoWidth, vh = video.videoHeight;
  if (vw) {
    ctx.drawImage(video, x0 * vw, y0 * vh, (x1 - x0) * vw, (y1 - y0) * vh, 0, 0, W, H);
    const rgba = ctx.getImageData(0, 0, W, H).data;
    const grey = new Float32Array(W * H);
    for (let i = 0; i < grey.length; i++) {
      grey[i] = 0.299 * rgba[4 * i] + 0.587 * rgba[4 * i + 1] + 0.114 * rgba[4 * i + 2];
    }
    let change = null;
    if (previous) {
      change = 0;
      for (let i = 0; i < grey.length; i++) change += Math.abs(grey[i] - previous[i]);
      change /= grey.length;
    }
    samples.push([(now - t0) / 1000, change]);
    previous = grey;
  }
  video.requestVideoFrameCallback(onFrame);
};
video.requestVideoFrameCallback(onFrame);
"""


@pytest.fixture(scope="module")
def chromium_tools():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is needed: pip install selenium")
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("headless Chromium and its driver are needed: apt-get install chromium chromium-driver")
    return webdriver


@pytest.fixture(scope="module")
def fake_mic(tmp_path_factory) -> tuple[Path, float]:
    """A 16 kHz WAV of LEAD_S silence, the bundled speech, TAIL_S silence; and where the speech ends (s)."""
    speech = load_audio(assets.SAMPLE_SPEECH)
    silence = np.zeros(int(LEAD_S * SAMPLE_RATE), np.float32), np.zeros(int(TAIL_S * SAMPLE_RATE), np.float32)
    pcm = (np.concatenate([silence[0], speech, silence[1]]) * 32767).astype(np.int16)
    path = tmp_path_factory.mktemp("mic") / "speech_then_silence.wav"
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(SAMPLE_RATE), f.writeframes(pcm.tobytes())
    return path, LEAD_S + len(speech) / SAMPLE_RATE


@pytest.fixture(scope="module")
def one_torch_thread():
    """DESIGN.md §13: one torch thread per real-time worker is steady; Chromium needs the other core."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server(one_torch_thread):
    thread = ServerThread(ServerConfig(port=0, size=SIZE, preset=PRESET, max_sessions=1))
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def browser(chromium_tools, fake_mic, tmp_path_factory):
    from selenium.webdriver.chrome.service import Service

    options = chromium_tools.ChromeOptions()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium')}")
    options.add_argument(f"--use-file-for-fake-audio-capture={fake_mic[0]}%noloop")
    driver = chromium_tools.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, server):
    """The page, loaded and greeted by the server; afterwards every tab is gone and the server is empty."""
    browser.get(f"http://127.0.0.1:{server.server.port}/")
    wait_for(browser, "return avatarState.status === 'ready'", "the server's hello", timeout=20)
    yield browser
    for handle in browser.window_handles[1:]:
        browser.switch_to.window(handle)
        browser.close()
    browser.switch_to.window(browser.window_handles[0])
    browser.get("about:blank")  # closes the page's websocket: the server frees the session
    deadline = time.monotonic() + 15
    while server.health()["sessions"] and time.monotonic() < deadline:
        time.sleep(0.2)


def wait_for(driver, script: str, what: str, timeout: float):
    """Poll a script until it returns something truthy; on timeout, fail with the page's state."""
    deadline = time.monotonic() + timeout
    while not (value := driver.execute_script(script)):
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout} s for {what}; page state: {page_state(driver)}")
        time.sleep(0.2)
    return value


def page_state(driver) -> dict:
    return driver.execute_script("return {...avatarState, statusText: document.getElementById('status').textContent}")


def element(driver, id_: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, id_)


def test_speech_moves_the_mouth_and_silence_rests_it(page, server, fake_mic):
    from selenium.webdriver.common.keys import Keys

    _, speech_end_s = fake_mic
    element(page, "head-motion").send_keys(Keys.HOME)  # a still head: only the mouth moves the mouth region
    rows, cols = mouth_box(SIZE)
    page.execute_script(MOUTH_SAMPLER, [cols.start / SIZE, rows.start / SIZE, cols.stop / SIZE, rows.stop / SIZE])
    element(page, "start").click()  # a real click: the gesture that lets the video play with sound
    end_s = speech_end_s + TAIL_S - 0.5
    wait_for(page, f"return avatarState.micOpenedMs !== null && mouthSamples.length && "
             f"mouthSamples.at(-1)[0] - avatarState.micOpenedMs / 1000 > {end_s}",
             "the whole fake microphone to play", timeout=end_s + 25)
    state = page_state(page)
    samples = np.array([(t, np.nan if c is None else c) for t, c in page.execute_script("return mouthSamples")])
    t = samples[:, 0] - state["micOpenedMs"] / 1000  # seconds into the WAV (it starts with the microphone)
    change = samples[:, 1]

    assert state["status"] == "live" and state["errors"] == [], state
    assert "Live" in state["statusText"]
    assert page.execute_script("const v = document.getElementById('video'); return !v.paused && !v.muted"), \
        "Start is the gesture that lets the avatar's voice play"
    assert 0 < state["firstFrameMs"] < 10_000, state
    assert state["codec"] == "video/VP8", "the server answers VP8 alone (engine/server/media.py)"

    steady = t >= t[0] + 2.0  # frames shown from 2 s after the first one
    fps = (steady.sum() - 1) / (t[steady][-1] - t[steady][0])
    assert fps >= 20, f"the page showed {fps:.1f} frames/s; server stats: {state['lastStats']}"

    speaking = np.nanmean(change[(t >= LEAD_S + 0.5) & (t < speech_end_s)])
    silent = np.nanmean(change[t >= speech_end_s + SETTLE_S])
    print(f"first frame {state['firstFrameMs']} ms, {fps:.1f} frames/s shown, codec {state['codec']}, "
          f"mouth change {speaking:.2f} speaking vs {silent:.2f} silent; last stats {json.dumps(state['lastStats'])}")
    assert speaking > 3.0, f"the mouth hardly moved while the microphone spoke ({speaking:.2f} grey levels/frame)"
    assert speaking > 4 * silent, f"the mouth moved as much in silence ({silent:.2f}) as in speech ({speaking:.2f})"

    stats = state["lastStats"]
    assert state["statsReceived"] >= end_s - 3, "the server sends stats once a second"
    assert stats["type"] == "stats" and stats["preset"] == PRESET and stats["viewers"] == 1
    assert 0 < stats["fps"] <= 2 * FPS and stats["frames_sent"] > 10 * FPS
    assert stats["audio_in_s"] > 0.8 * stats["frames_sent"] / FPS, "the microphone reaches the server"
    assert 0 < stats["floor_ms"] <= stats["latency_ms"] < 2000 and stats["engine_latency_ms"] > 0
    assert stats["frames_dropped"] >= 0 and stats["frames_late"] >= 0

    element(page, "stop").click()
    assert page_state(page)["status"] == "stopped"
    deadline = time.monotonic() + 10
    while server.health()["sessions"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.health()["sessions"] == 0, "Stop frees the visitor's session on the server"


def test_a_photo_without_a_face_shows_the_servers_error(page, tmp_path):
    import cv2

    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((320, 320, 3), (40, 160, 90), np.uint8))
    element(page, "portrait").send_keys(str(blank))
    errors = wait_for(page, "return avatarState.errors.length && avatarState.errors", "the server's answer",
                      timeout=30)
    assert errors[-1]["code"] == "bad_portrait" and "no face found" in errors[-1]["message"]
    assert "no face found" in element(page, "status").text
    assert page.execute_script("return document.getElementById('portrait').files.length") == 0, \
        "a rejected photo is dropped, so Start uses the server's portrait"


def test_a_photo_over_the_upload_limit_is_refused_in_the_page(page, tmp_path):
    big = tmp_path / "huge.jpg"
    big.write_bytes(b"\xff\xd8" + bytes(MAX_UPLOAD_BYTES))  # the page checks the size before sending
    element(page, "portrait").send_keys(str(big))
    errors = wait_for(page, "return avatarState.errors.length && avatarState.errors", "the size check", timeout=10)
    assert errors[-1]["code"] == "too_large" and "MiB" in errors[-1]["message"]
    assert "smaller photo" in element(page, "status").text


def test_a_second_visitor_is_told_the_server_is_full(page, server):
    element(page, "start").click()  # the server takes one session (max_sessions=1)
    wait_for(page, "return avatarState.framesDecoded > 0", "the first visitor's video", timeout=30)
    url = page.current_url
    page.switch_to.new_window("tab")
    page.get(url)
    wait_for(page, "return avatarState.status === 'ready'", "the second visitor's hello", timeout=20)
    element(page, "start").click()
    errors = wait_for(page, "return avatarState.errors.length && avatarState.errors", "the refusal", timeout=20)
    assert errors[-1]["code"] == "full", errors
    assert "full" in element(page, "status").text
    assert page_state(page)["status"] == "error" and not element(page, "start").get_attribute("disabled")
    assert server.health()["sessions"] == 1, "the first visitor keeps its session"


def test_a_broadcast_viewer_watches_without_a_microphone(browser, one_torch_thread):
    """`avatar live`: the page is a viewer; this server takes no viewer controls, so none are shown
    (tests/engine/server/test_live.py checks that the server refuses them anyway)."""
    from engine.render.renderer import Renderer
    from engine.stream import Session

    session = Session(Renderer.from_photo(assets.DEFAULT_PORTRAIT, SIZE), None, PRESET)  # no audio: it idles
    thread = ServerThread(ServerConfig(port=0, size=SIZE, driver=Baseline(), mode=Broadcast()), broadcast=session)
    try:
        browser.get(f"http://127.0.0.1:{thread.server.port}/")
        wait_for(browser, "return avatarState.status === 'ready'", "the server's hello", timeout=20)
        assert page_state(browser)["mode"] == "broadcast" and "watch" in element(browser, "status").text
        assert not element(browser, "setup").is_displayed(), "a viewer has no preset or portrait to choose"
        element(browser, "motion").click()  # a viewer may take the motion stream: it steers nothing
        element(browser, "start").click()
        wait_for(browser, "return avatarState.framesDecoded > 10", "the broadcast's video", timeout=30)
        assert page_state(browser)["micOpenedMs"] is None, "a viewer opens no microphone"
        # hello said viewers may not steer this broadcast: the page offers no controls
        assert not element(browser, "live-controls").is_displayed(), "a viewer gets no controls it cannot use"
        state = wait_for(browser, "return avatarState.motionFrames > 10 && avatarState", "the motion stream", timeout=10)
        names, line = state["motionNames"], state["lastMotion"]
        assert "jawOpen" in names["blendshapes"] and len(line["blendshapes"]) == len(names["blendshapes"])
        assert line["pts"] % 3600 == 0 and line["pts"] >= names["first_video_pts"] > 0 and not state["errors"]
        element(browser, "motion").click()  # off again: the lines stop (but those already on their way)
        time.sleep(0.5)
        stopped = page_state(browser)["motionFrames"]
        time.sleep(1.0)
        assert page_state(browser)["motionFrames"] == stopped
        assert page_state(browser)["status"] == "live", "the stream goes on"
    finally:
        browser.get("about:blank")
        thread.close()
        session.close()


def test_a_denied_microphone_is_explained(chromium_tools, server, tmp_path):
    from selenium.webdriver.chrome.service import Service

    options = chromium_tools.ChromeOptions()
    for flag in CHROMIUM_FLAGS:
        if flag != "--use-fake-ui-for-media-stream":  # that flag grants every request
            options.add_argument(flag)
    options.add_argument("--deny-permission-prompts")
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium'}")
    driver = chromium_tools.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(f"http://127.0.0.1:{server.server.port}/")
        wait_for(driver, "return avatarState.status === 'ready'", "the server's hello", timeout=20)
        element(driver, "start").click()
        errors = wait_for(driver, "return avatarState.errors.length && avatarState.errors", "the refusal",
                          timeout=10)
        assert errors[-1]["code"] == "mic_denied" and "Allow the microphone" in element(driver, "status").text
        assert page_state(driver)["status"] == "error" and not element(driver, "start").get_attribute("disabled")
    finally:
        driver.quit()
