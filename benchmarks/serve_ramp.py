"""Sessions `avatar serve` holds over WebRTC: a ramp of real visitors (issue 14).

stream_bench's ramp runs sessions in its own process with no WebRTC. This one starts `avatar serve` in a
process of its own, as a user would (defaults but --port, --max-sessions so that admission is not the limit,
and --batching), and connects real visitors: aiortc peers in this process (client.peer.run_client), each
sending the sample speech looped in real time as Opus and receiving the avatar's video and audio over RTP and
SRTP. Their receivers do not decode (benchmarks.broadcast_cpu._Undecoded): decoding would compete with the
server for this machine's cores, so the visitors cost the server's machine their sending and their RTP only,
and the count is a lower bound for visitors on other machines.

For 1, 2, ... visitors at once, each streams --seconds; a visitor is held when it received >= 24.5 fps over
its stream and its session's own stats (the last "stats" message on the data channel) show nothing dropped
and at most 5 % of frames late. Reported per count: the slowest visitor's fps, the server's worst engine latency p95,
late and dropped frames, and the server's CPU (its process and its render workers) over the run.

    python benchmarks/serve_ramp.py --batching on off --out benchmarks/results/serve_ramp
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import wave
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks.common import cpu_name, fmt, progress, run_benchmark, table
from engine import assets
from engine.audio.io import load_audio
from engine.timebase import SAMPLE_RATE

SCRIPT = "benchmarks/serve_ramp.py"
DEFAULT_OUT = Path(__file__).parent / "results" / "serve_ramp"
MIN_FPS, MAX_LATE = 24.5, 0.05  # as stream_bench's ramp
START_TIMEOUT_S = 180.0


class Server:
    """`avatar serve` in its own process on a free port, until closed; its log goes to `log`."""

    def __init__(self, batching: str, preset: str, max_sessions: int, size: int, log: Path):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        args = ["serve", "--host", "127.0.0.1", "--port", str(self.port), "--preset", preset,
                "--max-sessions", str(max_sessions), "--batching", batching, "--size", str(size)]
        self._log = log.open("w")
        self.process = subprocess.Popen([sys.executable, "-c", "from engine.cli import main; main()", *args],
                                        stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.health() is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"avatar serve did not start (exit code {self.process.returncode}); see {log}")
            time.sleep(0.5)

    def health(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as reply:
                return json.loads(reply.read())
        except OSError:
            return None

    def cpu_s(self) -> float:
        """CPU seconds of the server and its child processes (the render workers), user + system."""
        tick, total = os.sysconf("SC_CLK_TCK"), 0.0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                pid, rest = stat.read_text().split(" (", 1)
                fields = rest.rsplit(")", 1)[1].split()
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
            if int(pid) == self.process.pid or int(fields[1]) == self.process.pid:  # fields[1]: the parent
                total += (int(fields[11]) + int(fields[12])) / tick
        return total

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def speech_file(seconds: float, folder: Path) -> Path:
    """The sample speech looped to `seconds`, as a 16 kHz WAV the visitors send."""
    speech = load_audio(assets.SAMPLE_SPEECH)
    looped = np.tile(speech, int(np.ceil(seconds * SAMPLE_RATE / len(speech))))[: int(seconds * SAMPLE_RATE)]
    path = folder / "speech.wav"
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(SAMPLE_RATE)
        f.writeframes((np.clip(looped, -1, 1) * 32767).astype(np.int16).tobytes())
    return path


async def visitors(server: Server, count: int, audio: Path, seconds: float) -> tuple[list, float]:
    """`count` visitors at once for `seconds` each: their reports (or errors) and the server's CPU seconds a
    second of the run."""
    from benchmarks.broadcast_cpu import undecoded
    from client.peer import ClientOptions, run_client

    options = ClientOptions(audio=audio, seconds=seconds, tail_s=0.0, connect_timeout_s=60)
    with undecoded():
        cpu, start = server.cpu_s(), time.monotonic()
        reports = await asyncio.gather(*(run_client(f"ws://127.0.0.1:{server.port}/ws", options)
                                         for _ in range(count)), return_exceptions=True)
        return reports, (server.cpu_s() - cpu) / (time.monotonic() - start)


def held(report) -> bool:
    stats = report.server_stats or {}
    sent = stats.get("frames_sent") or 0
    # the session's own "fps" is of its last stats interval (a second: 24 or 26 frames on a jittery tick), so the
    # rate is the visitor's over the whole stream
    return (report.fps or 0) >= MIN_FPS and stats.get("frames_dropped", 1) == 0 \
        and stats.get("frames_late", sent) <= MAX_LATE * sent


def ramp(batching: str, args: argparse.Namespace, audio: Path) -> dict:
    log = args.out.with_name(f"{args.out.name}_{batching}.log")
    server = Server(batching, args.preset, args.max_sessions + 1, args.size, log)
    rows = []
    try:
        for n in range(1, args.max_sessions + 1):
            reports, cpu = asyncio.run(visitors(server, n, audio, args.seconds))
            failed = [r for r in reports if isinstance(r, BaseException)]
            ok = [r for r in reports if not isinstance(r, BaseException)]
            stats = [r.server_stats or {} for r in ok]
            rows.append({
                "visitors": n, "failed": [f"{type(e).__name__}: {e}" for e in failed],
                "held": not failed and all(map(held, ok)),
                "slowest_fps": min((r.fps or 0 for r in ok), default=0.0),
                "worst_engine_p95_ms": max((s.get("engine_latency_p95_ms") or 0 for s in stats), default=None),
                "most_late_pct": max((100 * s.get("frames_late", 0) / max(s.get("frames_sent") or 1, 1)
                                      for s in stats), default=None),
                "frames_dropped": sum(s.get("frames_dropped", 0) for s in stats),
                "server_core_pct": 100 * cpu,
                "each": [{"received_fps": r.fps, "held": held(r), "server": {k: s.get(k) for k in (
                    "fps", "frames_sent", "frames_late", "frames_dropped", "engine_latency_p95_ms")}}
                    for r, s in zip(ok, stats)]})
            progress(f"batching {batching}, {n} visitor(s): slowest {rows[-1]['slowest_fps']:.2f} fps, "
                     f"server {100 * cpu:.0f} % of a core, {'held' if rows[-1]['held'] else 'fell behind'}")
            deadline = time.monotonic() + 30
            while (server.health() or {}).get("sessions", 0) and time.monotonic() < deadline:
                time.sleep(0.2)  # the sessions closed before the next count
            if not rows[-1]["held"]:
                break
    finally:
        server.close()
    return {"batching": batching, "rows": rows, "held": max((r["visitors"] for r in rows if r["held"]), default=0),
            "ceiling_found": not rows[-1]["held"]}


def run(args: argparse.Namespace, command: str) -> dict:
    load = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)  # the servers' logs go beside it from the start
    with tempfile.TemporaryDirectory() as folder:
        audio = speech_file(args.seconds + 5, Path(folder))
        ramps = [ramp(b, args, audio) for b in args.batching]
    return {"command": command, "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "load_average_at_start": load},
            "preset": args.preset, "size": args.size, "seconds": args.seconds, "ramps": ramps}


def markdown(result: dict) -> str:
    m = result["machine"]
    rows = [[r["batching"], x["visitors"], f"{x['slowest_fps']:.2f}", fmt(x["worst_engine_p95_ms"]),
             "–" if x["most_late_pct"] is None else f"{x['most_late_pct']:.1f} %", x["frames_dropped"],
             f"{x['server_core_pct']:.0f} %", "held" if x["held"] else "fell behind" + (
                 f" ({'; '.join(x['failed'])})" if x["failed"] else "")]
            for r in result["ramps"] for x in r["rows"]]
    return "\n".join([
        "# `avatar serve` over WebRTC: visitors held", "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, load average {m['load_average_at_start']:.2f} at start. The "
        f"server and the visitors share it; the visitors do not decode what they receive.", "",
        f"Each count: that many visitors at once, each sending the sample speech in real time for "
        f"{result['seconds']:g} s ({result['preset']} preset, {result['size']} px, the server's defaults otherwise). Held: every visitor "
        f"received >= {MIN_FPS:g} fps over its stream and its session dropped nothing and made <= {MAX_LATE:.0%} of "
        f"its frames late (the session's own stats). Server CPU: the server process and its render workers, % of one core.", "",
        *table(["batching", "visitors", "slowest fps", "worst engine p95 ms", "most late", "dropped",
                "server CPU", "real time"], rows), "",
        *(f"batching {r['batching']}: **{r['held']}** visitor(s) held" + (
            "." if r["ceiling_found"] else " (the most tried; raise --max-sessions).") + "  " for r in result["ramps"]),
        ""])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batching", nargs="+", choices=("on", "off"), default=["on"],
                        help="`avatar serve --batching` of each ramp (default: on, the server's default)")
    parser.add_argument("--preset", default="balanced", help="the visitors' preset (default balanced)")
    parser.add_argument("--size", type=int, default=512, help="the server's --size (default 512, its default)")
    parser.add_argument("--seconds", type=float, default=15.0, help="each count's stream (default 15)")
    parser.add_argument("--max-sessions", type=int, default=8, help="stop the ramp here even if it holds (default 8)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="writes OUT.json, OUT.md and the servers' logs")
    args = parser.parse_args(argv)
    if args.seconds < 5 or args.max_sessions < 1:
        parser.error("--seconds must be at least 5 and --max-sessions at least 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    return run_benchmark("serve_ramp", SCRIPT, argv, parse_args, run, markdown)


if __name__ == "__main__":
    main()
