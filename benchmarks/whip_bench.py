"""What the broadcast sends when an SFU serves its viewers: packets and bytes from the WHIP publisher with
0, 1, 2 and 3 viewers watching through Janus, and the frame rate each viewer decodes.

The SFU fans out: the publisher's one connection must carry the same packets however many watch. Runs a
real broadcast Session (baseline driver, silence in: idle motion), publishes it with `WhipPublisher` to
Janus + simple-whip-server in a network namespace (benchmarks/sfu.py; needs root, janus and
simple-whip-server), and subscribes real aiortc viewers through Janus's VideoRoom API (client/janus.py).
Each step counts the publisher's outbound RTP over a window that starts once its viewers are joined.

    python benchmarks/whip_bench.py                 # -> benchmarks/results/whip.md / .json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import sfu as local_sfu
from benchmarks.common import cpu_name, run_benchmark, table
from client.janus import watch_room
from engine.assets import DEFAULT_PORTRAIT
from engine.errors import UserError
from engine.render.renderer import Renderer
from engine.server.media import FrameRelay
from engine.server.whip import WhipPublisher, WhipTarget
from engine.stream import Session, SessionOptions

SCRIPT = "benchmarks/whip_bench.py"
DEFAULT_OUT = Path("benchmarks/results/whip")
JOIN_S = 3.0  # viewers join, get a keyframe and settle before the window opens


async def _sent(publisher: WhipPublisher) -> dict[str, tuple[int, int]]:
    """(packets, bytes) sent so far per kind."""
    stats = await publisher.pc.getStats()
    return {s.kind: (s.packetsSent, s.bytesSent) for s in stats.values() if s.type == "outbound-rtp"}


async def _step(publisher: WhipPublisher, sfu: local_sfu.LocalSfu, viewers: int, window_s: float) -> dict:
    watches = [asyncio.create_task(watch_room(sfu.janus_ws, local_sfu.ROOM, JOIN_S + window_s + 1.0))
               for _ in range(viewers)]
    await asyncio.sleep(JOIN_S)
    before, t0, cpu0 = await _sent(publisher), time.monotonic(), time.process_time()
    await asyncio.sleep(window_s)
    after, elapsed, cpu = await _sent(publisher), time.monotonic() - t0, time.process_time() - cpu0
    seen = await asyncio.gather(*watches)
    rate = {kind: ((after[kind][0] - before[kind][0]) / elapsed, (after[kind][1] - before[kind][1]) * 8 / elapsed)
            for kind in after}
    return {
        "viewers": viewers,
        "video_packets_per_s": rate["video"][0], "video_kbps": rate["video"][1] / 1000,
        "audio_packets_per_s": rate["audio"][0], "audio_kbps": rate["audio"][1] / 1000,
        "viewer_fps": [w.video_frames / (JOIN_S + window_s + 1.0) for w in seen],
        "process_cpu": cpu / elapsed,  # engine, publisher and the in-process viewers together
    }


async def _bench(args: argparse.Namespace, sfu: local_sfu.LocalSfu) -> list[dict]:
    renderer = Renderer.from_photo(DEFAULT_PORTRAIT, args.size, "cpu")
    relay = FrameRelay(Session(renderer, None, "balanced", options=SessionOptions(vad=False)))
    relay.start()
    publisher = WhipPublisher(relay, WhipTarget(sfu.endpoint("bench")))
    try:
        await publisher.start()
        return [await _step(publisher, sfu, n, args.seconds) for n in args.viewers]
    finally:
        await publisher.close()
        await relay.close()


def run(args: argparse.Namespace, command: str) -> dict:
    if reason := local_sfu.unavailable():
        raise UserError(f"cannot start the local SFU: {reason}")
    with tempfile.TemporaryDirectory(prefix="whip-bench-") as run_dir, local_sfu.LocalSfu(Path(run_dir)) as sfu:
        steps = asyncio.run(_bench(args, sfu))
    return {"command": command, "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]},
            "size": args.size, "window_s": args.seconds, "steps": steps}


def markdown(result: dict) -> str:
    m, steps = result["machine"], result["steps"]
    base = next((s for s in steps if s["viewers"] == min(x["viewers"] for x in steps)), steps[0])
    rows = [[s["viewers"], f"{s['video_packets_per_s']:.1f}", f"{s['video_packets_per_s'] / base['video_packets_per_s']:.2f}x",
             f"{s['video_kbps']:.0f}", f"{s['audio_packets_per_s']:.1f}", f"{s['audio_kbps']:.0f}",
             " / ".join(f"{f:.1f}" for f in s["viewer_fps"]) or "–", f"{100 * s['process_cpu']:.0f} %"]
            for s in steps]
    return "\n".join([
        "# WHIP to an SFU: what the publisher sends per viewer count", "",
        f"Command: `{result['command']}`  ", f"Date: {result['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, load average {m['load_average_at_start']:.2f} at start  ",
        (f"SFU: Janus 1.1 VideoRoom behind simple-whip-server (Debian 12), in a network namespace on this machine. "
         f"Broadcast: {result['size']} px, baseline driver, idle motion; VP8 + Opus from aiortc. "
         f"Each step: viewers join, {JOIN_S:g} s to settle, then a {result['window_s']:g} s window."), "",
        *table(["viewers", "video packets/s", "vs fewest", "video kbit/s", "audio packets/s", "audio kbit/s",
                "each viewer's decoded fps (whole run)", "process CPU"], rows),
        "",
        ("The publisher's packets stay flat as viewers are added: Janus forwards one incoming stream to each "
         "subscriber, so the engine's upload and encode do not grow with the audience. The bitrate follows "
         "aiortc's congestion control and Janus's REMB (the room's cap); process CPU includes the in-process "
         "viewers' decoding."), "",
    ])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--viewers", type=int, nargs="+", default=[0, 1, 2, 3], help="viewer counts to step through")
    parser.add_argument("--seconds", type=float, default=10.0, help="counting window of each step (default 10)")
    parser.add_argument("--size", type=int, default=256, help="video width and height in px (default 256)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    if min(args.viewers) < 0 or args.seconds <= 0:
        parser.error("--viewers must be >= 0 and --seconds > 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    return run_benchmark("whip_bench", SCRIPT, argv, parse_args, run, markdown)


if __name__ == "__main__":
    main()
