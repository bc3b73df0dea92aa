"""The motion stream out (engine.server.protocol, "motion") over loopback, as a client receives it.

Starts `avatar serve` (default: 512 px, balanced preset, the learned generator), connects the Python
client with the sample speech and `record_motion`, --runs times, and reports per run: motion lines and
their arrival rate, the longest gap between lines, bytes a line on the wire and per second, how many
decoded video frames (from the first line on) have the line with their pts and the other way round,
when a line arrives against its video frame (median; positive: after the frame is decoded), and the
jaw opening the lines carry against the mouth in the decoded pixels (Pearson r; an open mouth is
dark, so the best lag is the most negative r: 0 means each line describes its own frame).

    python benchmarks/motion_stream.py --out benchmarks/results/motion_stream
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
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks.common import cpu_name, run_benchmark, stats
from client.peer import ClientOptions, run_client
from engine import assets
from engine.motion import spec
from engine.server import protocol

SCRIPT = "benchmarks/motion_stream.py"
LAGS = range(-3, 4)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--preset", default="balanced")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/motion_stream"))
    return p.parse_args(argv)


async def _one(url: str, path: Path, box: tuple[slice, slice], preset: str) -> dict:
    video = {}  # decoded pts -> (arrival, mean grey of the mouth)
    arrivals = {}  # motion pts -> arrival

    def on_video(frame, arrival):
        video[frame.pts] = (arrival, float(frame.to_ndarray(format="gray")[box].mean()))

    report = await run_client(url, ClientOptions(audio=assets.SAMPLE_SPEECH, tail_s=1.0, record_motion=path,
                                                 preset=preset),
                              on_video=on_video, on_motion=lambda message, t: arrivals.setdefault(message["pts"], t))
    header, *lines = [json.loads(line) for line in path.read_text().splitlines()]
    split = len(header["names"]) - len(spec.HEAD)
    wire = [len(protocol.encode({"type": "motion", "pts": line["pts"], "blendshapes": line["coeffs"][:split],
                                 "head": line["coeffs"][split:]})) for line in lines]
    shown = {pts + header["first_video_pts"]: value for pts, value in video.items()}
    pts = [line["pts"] for line in lines]
    after = {p for p in shown if p >= pts[0]}
    both = sorted(after & set(pts))
    times = np.array([arrivals[p] for p in pts])
    jaw = dict(zip(pts, spec.load(path)[:, spec.index("jawOpen")]))
    grey, opening = np.array([shown[p][1] for p in both]), np.array([jaw[p] for p in both])
    r = {str(lag): float(np.corrcoef(grey[max(lag, 0): len(grey) + min(lag, 0)],
                                opening[max(-lag, 0): len(opening) - max(lag, 0)])[0, 1]) for lag in LAGS}
    return {
        "video_frames": report.frames, "video_fps": report.fps,
        "motion_lines": len(lines), "motion_fps": report.motion_fps,
        "longest_gap_ms": float(np.diff(times).max() * 1000),
        "bytes_per_line": float(np.mean(wire)), "bytes_per_s": float(np.mean(wire) * report.motion_fps),
        "frames_without_line": len(after - set(pts)), "lines_without_frame": len(set(pts) - after),
        "line_after_frame_ms": float(np.median([arrivals[p] - shown[p][0] for p in both]) * 1000),
        "jaw_vs_mouth_r": r, "best_lag": int(min(r, key=r.get)),
        "server_motion_dropped": (report.server_stats or {}).get("motion_dropped"),
    }


def run(args, command: str) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    from engine.face.analysis import analyze_portrait  # FaceMesh loads only when a run starts
    from engine.face.measure import mouth_box

    server = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "--port", str(port), "--size",
                               str(args.size), "--preset", args.preset, "--max-sessions", "1"],
                              env=env, stdout=subprocess.PIPE, text=True)
    try:
        for line in server.stdout:  # the banner comes once the port listens
            if "open http" in line:
                break
        box = mouth_box(analyze_portrait(assets.DEFAULT_PORTRAIT, size=args.size).landmarks)
        with tempfile.TemporaryDirectory() as tmp:
            runs = [asyncio.run(_one(f"ws://127.0.0.1:{port}/ws", Path(tmp) / f"{i}.jsonl", box, args.preset))
                    for i in range(args.runs)]
    finally:
        server.terminate()
        server.wait(15)
    return {"command": command, "date": datetime.now(UTC).strftime("%Y-%m-%d"), "cpu": cpu_name(),
            "load_average_1min": os.getloadavg()[0],  # this machine is shared: the video's own fps shows it
            "size": args.size, "preset": args.preset, "runs": runs,
            "motion_fps": stats([r["motion_fps"] for r in runs]),
            "line_after_frame_ms": stats([r["line_after_frame_ms"] for r in runs])}


def markdown(result: dict) -> str:
    rows = [f"| {i + 1} | {r['video_frames']} ({r['video_fps']:.2f}/s) | {r['motion_lines']} | {r['motion_fps']:.2f} | "
            f"{r['longest_gap_ms']:.0f} ms | {r['bytes_per_line']:.0f} B, {r['bytes_per_s'] / 1000:.1f} kB/s | "
            f"{r['frames_without_line']} / {r['lines_without_frame']} | {r['line_after_frame_ms']:+.0f} ms | "
            f"{r['jaw_vs_mouth_r']['0']:.2f} ({r['jaw_vs_mouth_r']['-1']:.2f} / {r['jaw_vs_mouth_r']['1']:.2f}) | "
            f"{r['best_lag']} | {r['server_motion_dropped']} |" for i, r in enumerate(result["runs"])]
    return "\n".join([
        "# The motion stream out, over loopback (the Python client)",
        "",
        (f"Command: `{result['command']}`: `avatar serve` at {result['size']} px, {result['preset']} preset, the "
         f"learned generator; the client sends engine/assets/speech.wav in real time with `--record-motion`; both "
         f"on one {result['cpu']} ({os.cpu_count()} cores, 1-minute load average {result['load_average_1min']:.1f} "
         f"at the end: the machine was shared), {result['date']}."),
        "",
        ("| run | video frames (/s) | motion lines | lines/s | longest gap | on the wire | frames without a line / "
         "lines without a frame | line arrives after its frame | jawOpen vs mouth grey, r at lag 0 (-1 / +1) | "
         "best lag | dropped by the server |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        ("Lines are counted from the first one (the data channel may open after the first video frames); "
         "\"lines without a frame\" are the last few in flight as the client hangs up. A negative arrival "
         "means the line comes before its frame is decoded: a 3D client that wants them together holds each "
         "line until the frame with its pts is shown."),
        "",
        "Raw results: the .json file of the same name.",
        "",
    ])


def main(argv=None) -> dict:
    return run_benchmark("motion_stream", SCRIPT, argv, parse_args, run, markdown)


if __name__ == "__main__":
    main()
