"""Renderer and offline-render speed on this machine.

Measures (median and range over repeats):
  * portrait analysis: face landmarks + rig + renderer set-up, per avatar;
  * renderer frames/s at 256 and 512 px with 1 and 2 torch threads, one frame per call (live)
    and 4 per call (offline), motion from the baseline driver on the sample speech, so the
    mouth, eyes and head really move;
  * end-to-end `avatar render` of the bundled sample as a multiple of real time.

Writes benchmarks/results/render_bench.json and .md with the command that produced them.
    python benchmarks/render_bench.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import cpu_name, stats
from engine import assets
from engine.audio.frontend import extract_features
from engine.audio.io import load_audio
from engine.face.analysis import analyze_portrait
from engine.face.rig import Rig
from engine.motion.baseline import BaselineDriver, BaselineOptions
from engine.offline import RenderRequest, render_file
from engine.render.renderer import Renderer
from engine.runtime import set_threads, tune_allocator

RESULTS = Path(__file__).parent / "results"


def bench_analysis(repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        Renderer(Rig(analyze_portrait(assets.DEFAULT_PORTRAIT, size=512)))
        times.append(time.perf_counter() - t)
    return stats([t * 1000 for t in times])


def bench_renderer(motion: np.ndarray, size: int, threads: int, batch: int, repeats: int) -> dict:
    set_threads(threads)
    renderer = Renderer(Rig(analyze_portrait(assets.DEFAULT_PORTRAIT, size=size))).eval()
    chunks = [torch.from_numpy(motion[i : i + batch]) for i in range(0, len(motion) - batch + 1, batch)]
    fps = []
    with torch.inference_mode():
        for c in chunks[:3]:  # warm-up
            renderer.frames(c)
        for _ in range(repeats):
            t = time.perf_counter()
            for c in chunks:
                renderer.frames(c)
            fps.append(len(chunks) * batch / (time.perf_counter() - t))
    return stats(fps)


def bench_end_to_end(repeats: int) -> dict:
    speed = []
    audio_seconds = len(load_audio(assets.SAMPLE_SPEECH)) / 16000
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            t = time.perf_counter()
            render_file(RenderRequest(out=Path(tmp) / "talk.mp4", progress=False))
            speed.append(audio_seconds / (time.perf_counter() - t))
    return stats(speed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    tune_allocator()  # as the `avatar` command does

    motion = BaselineDriver(BaselineOptions()).drive(extract_features(load_audio(assets.SAMPLE_SPEECH)))
    result = {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "analysis_ms": bench_analysis(args.repeats),
        "renderer_fps": {f"{size}px_{threads}thread_batch{batch}": bench_renderer(motion, size, threads, batch,
                                                                                  args.repeats)
                         for size in (256, 512) for threads in (1, 2) for batch in (1, 4)},
        "end_to_end_x_realtime": bench_end_to_end(max(2, args.repeats // 2)),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "render_bench.json").write_text(json.dumps(result, indent=2) + "\n")

    def row(name, s, unit):
        return f"| {name} | {s['median']:.1f} {unit} | {s['min']:.1f} – {s['max']:.1f} | {s['runs']} |"

    lines = [
        "# Render benchmark", "",
        f"Command: `{result['command']}`  ", f"Date: {result['date']}  ",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, torch {result['machine']['torch']}", "",
        "| what | median | range | runs |", "|---|---|---|---|",
        row("portrait analysis + rig + renderer set-up", result["analysis_ms"], "ms"),
        *(row(f"renderer {k.replace('_', ', ')}", v, "frames/s") for k, v in result["renderer_fps"].items()),
        row("end-to-end `avatar render` of the sample", result["end_to_end_x_realtime"], "x real time"),
    ]
    (RESULTS / "render_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
