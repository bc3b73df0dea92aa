"""Broadcast server CPU by viewer count (`stream_bench.py --viewers 1,4,8`): what each viewer of an
`avatar live` broadcast costs the server.

The server runs in its own process, as `avatar live` runs it (AvatarServer in broadcast mode, one Session
fed in real time by the bench's Mic with the sample speech, one torch thread); the viewers are real aiortc
peers in this process whose receivers skip decoding (_Undecoded: decoding would compete with the server for
the CPU). For each viewer count the viewers connect, the stream settles for SETTLE_S, then the server
process' CPU time (user + system, every thread) is read over --viewer-seconds: CPU seconds per second of
stream the median viewer received (so a starved server is not flattered), as % of one core.
Viewer counts and, with --baseline-root, the two servers are interleaved repeat by repeat, and each
figure is the median of --repeats (this machine is shared and noisy).

--baseline-root DIR runs the same measurements against the `engine/` package under DIR (e.g. an export
of an earlier commit: `git archive <commit> engine | tar -x -C DIR`), for a before/after comparison. The
server process speaks today's engine API (engine.backends, typed driver and mode): an engine from before
them needs this file from its own commit (the recorded "before" ran at 4858255 with that version of it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import av

from benchmarks.common import stats
from engine.timebase import FPS

ROOT = Path(__file__).resolve().parents[1]
SETTLE_S = 2.0  # after the last viewer's first frame, before the CPU window opens
MAX_VIEWERS = 64


def serve_broadcast(port: int, size: int, preset: str, backend: str, device: str) -> None:
    """The server process: a broadcast of one session fed by the bench's Mic, until stdin closes."""
    import engine
    from benchmarks.stream_bench import Mic, mic_audio
    from engine.assets import DEFAULT_PORTRAIT
    from engine.backends.registry import StepRegistry
    from engine.motion.choice import Learned
    from engine.render.renderer import Renderer
    from engine.server.app import LIVE_OPTIONS, AvatarServer, Broadcast, ServerConfig, configure
    from engine.stream import Session, get_preset
    from export.runtime import prepare

    config = ServerConfig(port=port, size=size, preset=preset, driver=Learned(backend=backend), device=device,
                          max_sessions=MAX_VIEWERS, mode=Broadcast())
    configure(config, 1)
    models = StepRegistry(backend, device, 1, prepare)
    renderer = Renderer.from_photo(DEFAULT_PORTRAIT, size, device)
    chosen = get_preset(preset)
    session = Session(renderer, models.get(chosen.weights, chosen.steps), preset, options=LIVE_OPTIONS)
    mic = Mic([session], mic_audio())

    async def main():
        server = AvatarServer(config, broadcast=session, models=models)
        await server.start()
        mic.start()
        print(f"ready {server.port} {Path(engine.__file__).parent}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # the bench closes it to stop us
        mic.stop()  # before the server closes the session
        await server.close()

    try:
        asyncio.run(main())
    finally:
        if mic.is_alive():
            mic.stop()
        session.close()


class ServerProcess:
    """serve_broadcast() in a child process importing `engine` from `engine_root`."""

    def __init__(self, engine_root: Path, size: int, preset: str, backend: str, device: str):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys([str(engine_root), str(ROOT)]))}
        code = (f"from benchmarks.broadcast_cpu import serve_broadcast; "
                f"serve_broadcast(0, {size}, {preset!r}, {backend!r}, {device!r})")
        # run from engine_root: `python -c` puts the working directory ahead of PYTHONPATH
        self.process = subprocess.Popen([sys.executable, "-c", code], cwd=engine_root, env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline().split()
        if not line or line[0] != "ready" or Path(line[2]) != engine_root / "engine":
            self.close()
            raise RuntimeError(f"the broadcast server did not start with the engine under {engine_root} (it said "
                               f"{' '.join(line)!r}); run it alone to see why")
        self.port = int(line[1])
        import psutil

        self._ps = psutil.Process(self.process.pid)

    def cpu_s(self) -> float:
        times = self._ps.cpu_times()
        return times.user + times.system

    def viewers(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=10) as reply:
            return json.loads(reply.read())["sessions"]

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class _Undecoded:
    """What the viewers' receivers get instead of a decoder: a video frame per encoded frame, undecoded (a
    16 px stand-in with its timestamp), no audio. The server's packets and the viewers' RTP, SRTP, RTCP and
    jitter buffers are real; only the decoding, which would compete with the server for the CPU, is not done."""

    def __init__(self, kind: str):
        self.kind = kind

    def decode(self, encoded_frame) -> list:
        if self.kind == "audio":
            return []
        frame = av.VideoFrame(16, 16, "yuv420p")
        frame.pts = encoded_frame.timestamp
        return [frame]


@contextlib.contextmanager
def undecoded() -> Iterator[None]:
    """This process's aiortc receivers skip decoding (_Undecoded) inside the block, and decode again after."""
    from aiortc import rtcrtpreceiver

    decoder = rtcrtpreceiver.get_decoder
    rtcrtpreceiver.get_decoder = lambda codec: _Undecoded(codec.mimeType.split("/")[0])
    try:
        yield
    finally:
        rtcrtpreceiver.get_decoder = decoder


async def _viewer(url: str, arrivals: list[float], stop: asyncio.Event) -> None:
    """A real aiortc viewer (receivers left undecoded) that notes each video frame's arrival until `stop`."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError
    from websockets.asyncio.client import connect

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")

    async def take(track):
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            arrivals.append(time.monotonic())

    tasks = []
    pc.on("track", lambda track: track.kind == "video" and tasks.append(asyncio.create_task(take(track))))
    await pc.setLocalDescription(await pc.createOffer())
    async with connect(url) as ws:
        await ws.recv()  # hello
        await ws.send(json.dumps({"type": "offer", "sdp": pc.localDescription.sdp}))
        reply = json.loads(await ws.recv())
        if reply["type"] != "answer":
            raise RuntimeError(f"the server refused a viewer: {reply}")
        await pc.setRemoteDescription(RTCSessionDescription(reply["sdp"], "answer"))
        await stop.wait()
        await pc.close()
    for task in tasks:
        task.cancel()


async def _window(server: ServerProcess, viewers: int, seconds: float) -> dict:
    """`viewers` viewers at once; the server's CPU over `seconds` once they all receive video."""
    url = f"ws://127.0.0.1:{server.port}/ws"
    stop, arrivals = asyncio.Event(), [[] for _ in range(viewers)]
    with undecoded():
        clients = [asyncio.create_task(_viewer(url, a, stop)) for a in arrivals]
        try:
            async with asyncio.timeout(60):
                while not all(arrivals):
                    if failed := [c for c in clients if c.done()]:
                        failed[0].result()
                    await asyncio.sleep(0.1)
            await asyncio.sleep(SETTLE_S)
            cpu, start = server.cpu_s(), time.monotonic()
            await asyncio.sleep(seconds)
            cpu, end = server.cpu_s() - cpu, time.monotonic()
        finally:
            stop.set()
            await asyncio.gather(*clients, return_exceptions=True)
    fps = sorted(sum(start <= t < end for t in a) / (end - start) for a in arrivals)
    stream_s = fps[len(fps) // 2] * (end - start) / FPS  # of video the median viewer got in the window
    return {"core_pct": 100 * cpu / stream_s, "wall_core_pct": 100 * cpu / (end - start),
            "slowest_fps": fps[0], "median_fps": fps[len(fps) // 2]}


def measure(engines: dict[str, Path], counts: list[int], seconds: float, repeats: int, size: int, preset: str,
            backend: str, device: str, progress) -> dict:
    """{engine: {count: stats of core_pct, slowest fps}}, each count measured `repeats` times, interleaved."""
    runs = {name: {n: [] for n in counts} for name in engines}
    for repeat in range(repeats):
        for name, root in engines.items():
            server = ServerProcess(root, size, preset, backend, device)
            try:
                for n in counts:
                    runs[name][n].append(asyncio.run(_window(server, n, seconds)))
                    while server.viewers():  # the last ones' slots are freed before the next count
                        time.sleep(0.2)
                    r = runs[name][n][-1]
                    progress(f"{name}, repeat {repeat + 1}: {n} viewer(s) {r['core_pct']:.0f} % of a core per "
                             f"second of stream ({r['wall_core_pct']:.0f} % of wall time), {r['median_fps']:.1f} fps")
            finally:
                server.close()
    return {name: {str(n): {k: stats([r[k] for r in rs]) for k in rs[0]} for n, rs in per.items()}
            for name, per in runs.items()}


def section(result: dict) -> list[str]:
    from benchmarks.common import table

    b = result["broadcast"]
    counts = list(next(iter(b["servers"].values())))
    rows = []
    for name, per in b["servers"].items():
        base = per[counts[0]]["core_pct"]["median"]
        for n in counts:
            c, r = per[n]["core_pct"], per[n]
            rows.append([name, n, f"{c['median']:.0f} ({c['min']:.0f} – {c['max']:.0f})", f"{c['median'] / base:.2f}x",
                         f"{r['wall_core_pct']['median']:.0f}", f"{r['median_fps']['median']:.1f}",
                         f"{r['slowest_fps']['median']:.1f}"])
    return [
        f"## Broadcast server CPU by viewers ({b['preset']}, {result['renderer_px']} px)", "",
        "CPU: the server process' CPU time (user + system, all threads) over the window, per second of stream the "
        f"median viewer received in it, % of one core; median (range) of {b['repeats']} repeats of {b['seconds']:g} s, "
        "counts and servers interleaved, on a shared, noisy machine (per second of stream, so a server the machine "
        f"starved of CPU is not flattered). vs {counts[0]}: against {counts[0]} viewer(s) of the same server. Per wall "
        "second: the same CPU time over the window's wall time. fps: frames the median / slowest viewer received "
        "per second in the window (medians over repeats). Viewers: real aiortc peers in the bench process whose "
        "receivers skip decoding (RTP, SRTP, RTCP and jitter buffers are real).", "",
        *table(["server", "viewers", "CPU per s of stream, % of a core", f"vs {counts[0]}", "per wall s, %",
                "median fps", "slowest fps"], rows), "",
        *(f"- {name}: {path}" for name, path in b["engines"].items()), "",
    ]
