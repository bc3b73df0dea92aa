"""Broadcast server CPU by viewer count (`stream_bench.py --viewers 1,4,8`): what each viewer of an
`avatar live` broadcast costs the server.

The server runs in its own process, as `avatar live` runs it (AvatarServer in broadcast mode, one Session
fed in real time by the bench's Mic with the sample speech, one torch thread); the viewers are real aiortc
peers (client.peer.run_client) in this process, so their decoding is not counted. For each viewer count the
viewers connect, the stream settles for SETTLE_S, then the server process' CPU time (user + system, every
thread) is read over --viewer-seconds of stream: CPU seconds per second of stream, as % of one core.
Viewer counts and, with --baseline-root, the two servers are interleaved repeat by repeat, and each
figure is the median of --repeats (this machine is shared and noisy).

--baseline-root DIR runs the same measurements against the `engine/` package under DIR (e.g. an export
of an earlier commit: `git archive <commit> engine | tar -x -C DIR`), for a before/after comparison.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from benchmarks.common import stats

ROOT = Path(__file__).resolve().parents[1]
SETTLE_S = 2.0  # after the last viewer's first frame, before the CPU window opens
MAX_VIEWERS = 64


def serve_broadcast(port: int, size: int, preset: str, backend: str, device: str) -> None:
    """The server process: a broadcast of one session fed by the bench's Mic, until stdin closes."""
    from benchmarks.stream_bench import Mic, mic_audio
    from engine.assets import DEFAULT_PORTRAIT
    from engine.render.renderer import Renderer
    from engine.server.app import LIVE_OPTIONS, AvatarServer, ServerConfig, configure, generator_for
    from engine.stream import Session, get_preset

    config = ServerConfig(port=port, size=size, preset=preset, backend=backend, device=device,
                          max_sessions=MAX_VIEWERS)
    configure(config, 1)
    renderer = Renderer.from_photo(DEFAULT_PORTRAIT, size, device)
    session = Session(renderer, generator_for(config, get_preset(preset)), preset, options=LIVE_OPTIONS)
    mic = Mic([session], mic_audio())

    async def main():
        server = AvatarServer(config, broadcast=session)
        await server.start()
        mic.start()
        print(f"ready {server.port}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # the bench closes it to stop us
        await server.close()

    try:
        asyncio.run(main())
    finally:
        mic.stop()
        session.close()


class ServerProcess:
    """serve_broadcast() in a child process importing `engine` from `engine_root`."""

    def __init__(self, engine_root: Path, size: int, preset: str, backend: str, device: str):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys([str(engine_root), str(ROOT)]))}
        code = (f"from benchmarks.broadcast_cpu import serve_broadcast; "
                f"serve_broadcast(0, {size}, {preset!r}, {backend!r}, {device!r})")
        self.process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("ready"):
            self.close()
            raise RuntimeError(f"the broadcast server under {engine_root} did not start (said {line!r}); "
                               "run it alone to see why")
        self.port = int(line.split()[1])
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


async def _window(server: ServerProcess, viewers: int, seconds: float) -> dict:
    """`viewers` real viewers at once; the server's CPU over `seconds` once they all receive video."""
    from client.peer import ClientOptions, run_client

    loop = asyncio.get_running_loop()
    url = f"ws://127.0.0.1:{server.port}/ws"
    length = seconds + SETTLE_S + 8  # from the offer: connecting (a few seconds), settling, the window
    clients = [asyncio.create_task(run_client(url, ClientOptions(seconds=length))) for _ in range(viewers)]
    deadline = time.monotonic() + 60
    while await loop.run_in_executor(None, server.viewers) < viewers:
        if time.monotonic() > deadline or any(c.done() for c in clients):
            raise RuntimeError(f"{viewers} viewers did not all connect within 60 s")
        await asyncio.sleep(0.2)
    await asyncio.sleep(SETTLE_S + 1.0)  # connected, first frames in, the stream settled
    cpu, wall = server.cpu_s(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu, wall = server.cpu_s() - cpu, time.monotonic() - wall
    reports = await asyncio.gather(*clients)
    return {"core_pct": 100 * cpu / wall, "slowest_fps": min(r.fps or 0 for r in reports)}


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
                    progress(f"{name}, repeat {repeat + 1}: {n} viewer(s) {r['core_pct']:.0f} % of a core, "
                             f"slowest {r['slowest_fps']:.1f} fps")
            finally:
                server.close()
    return {name: {str(n): {"core_pct": stats([r["core_pct"] for r in rs]),
                            "slowest_fps": stats([r["slowest_fps"] for r in rs])} for n, rs in per.items()}
            for name, per in runs.items()}


def section(result: dict) -> list[str]:
    from benchmarks.common import table

    b = result["broadcast"]
    counts = list(next(iter(b["servers"].values())))
    rows = []
    for name, per in b["servers"].items():
        base = per[counts[0]]["core_pct"]["median"]
        for n in counts:
            c, f = per[n]["core_pct"], per[n]["slowest_fps"]
            rows.append([name, n, f"{c['median']:.0f} ({c['min']:.0f} – {c['max']:.0f})",
                         f"{c['median'] / base:.2f}x", f"{f['median']:.1f}"])
    return [
        f"## Broadcast server CPU by viewers ({b['preset']}, {result['renderer_px']} px)", "",
        f"Server process CPU time (user + system, all threads) per second of stream, % of one core: median "
        f"(range) of {b['repeats']} repeats of {b['seconds']:g} s, interleaved, on a shared, noisy machine. "
        f"Viewers: real aiortc peers in the bench process (their decoding is not counted). x{counts[0]}: "
        f"against {counts[0]} viewer(s) of the same server. Slowest fps: the slowest viewer's received "
        "frames per second (median over repeats).", "",
        *table(["server", "viewers", "CPU % of a core", f"vs {counts[0]}", "slowest fps"], rows), "",
        *(f"- {name}: {path}" for name, path in b["engines"].items()), "",
    ]
