"""What the batched stages cost when two run at once, one a core (issue 14's capacity work).

Batched sessions make their chunks in phase groups (engine.batch.PhaseGroups, one a core), so on the
2-core CPU one group's speech encoder, chunk graph or renderer call often runs beside another's. This
times each stage as a phase group of three sessions calls it (the encoder and the chunk graph for 3
streams, the renderer for their 6 frames; one thread each, balanced preset on ONNX Runtime, 512 px):
alone, then beside each stage in a second thread. For each pair: ms per call of both, and the work
done against the same calls made one after the other on one core (above 1: the second core added
throughput).

    python benchmarks/stage_overlap.py --out benchmarks/results/stage_overlap
"""

from __future__ import annotations

import argparse
import itertools
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import cpu_name, fmt, preset_step, run_benchmark, table
from benchmarks.stage_costs import inputs, motion
from engine import assets
from engine.face.analysis import analyze_portrait
from engine.face.rig import Rig
from engine.render.renderer import Renderer
from engine.runtime import set_threads
from engine.stream import PRESETS

SCRIPT = "benchmarks/stage_overlap.py"
DEFAULT_OUT = Path(__file__).parent / "results" / "stage_overlap"
STREAMS = 3  # a phase group's sessions at 6 sessions on 2 cores


def per_call_ms(fn, seconds: float, stop: threading.Event | None = None) -> float:
    """ms per call of `fn`, called for `seconds` (or until `stop`, if it is set first)."""
    fn()
    calls, start = 0, time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - start < seconds and not (stop and stop.is_set()):
            fn()
            calls += 1
    return 1000 * (time.perf_counter() - start) / max(calls, 1)


def side_by_side(a, b, seconds: float) -> tuple[float, float]:
    """ms per call of `a` and of `b`, each called in its own thread at the same time."""
    out, stop = {}, threading.Event()

    def run(key, fn):
        out[key] = per_call_ms(fn, seconds, stop)
        stop.set()  # the other stops too: both are timed only while both run

    threads = [threading.Thread(target=run, args=(k, fn)) for k, fn in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out["a"], out["b"]


def run(args: argparse.Namespace, command: str) -> dict:
    rng = np.random.default_rng(0)
    step = preset_step(PRESETS["balanced"], "onnxruntime", "cpu")
    renderer = Renderer(Rig(analyze_portrait(assets.DEFAULT_PORTRAIT, size=512))).eval()
    set_threads(1)
    mel, cond, noise, cache = inputs(step, STREAMS, rng)
    coeffs = motion(2 * STREAMS, rng)
    stages = {f"speech encoder, {STREAMS} streams": lambda: step.encode(mel),
              f"chunk graph, {STREAMS} streams": lambda: step(cond, noise, cache),
              f"renderer, {2 * STREAMS} frames": lambda: renderer.frames(coeffs)}
    alone = {name: per_call_ms(fn, args.seconds) for name, fn in stages.items()}
    pairs = []
    for a, b in itertools.combinations_with_replacement(stages, 2):
        ms_a, ms_b = side_by_side(stages[a], stages[b], args.seconds)
        # work done in a second of both running, in seconds of one core doing the same calls alone
        work = 1000 / ms_a * alone[a] / 1000 + 1000 / ms_b * alone[b] / 1000
        pairs.append({"a": a, "b": b, "a_ms": ms_a, "b_ms": ms_b, "throughput": work})
    return {"command": command, "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "load_average_at_start": os.getloadavg()[0],
                        "torch": torch.__version__},
            "seconds": args.seconds, "alone_ms": alone, "pairs": pairs}


def markdown(result: dict) -> str:
    m = result["machine"]
    return "\n".join([
        "# Batched stages side by side", "",
        f"Command: `{result['command']}`  ", f"Date: {result['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, load average {m['load_average_at_start']:.2f} at start, torch "
        f"{m['torch']}, one thread a stage. Balanced preset's generator on ONNX Runtime, 512 px renderer; each "
        f"figure is ms per call over {result['seconds']:g} s.", "",
        "## Alone", "",
        *table(["stage", "ms a call"], [[k, fmt(v, ".1f")] for k, v in result["alone_ms"].items()]), "",
        "## Two at once", "",
        "Throughput: the calls both made in a second, in seconds of one core making them alone (2.0: two "
        "cores' worth; 1.0: the second core added nothing).", "",
        *table(["stage A", "stage B", "A ms a call", "B ms a call", "throughput"],
               [[p["a"], p["b"], fmt(p["a_ms"], ".1f"), fmt(p["b_ms"], ".1f"), fmt(p["throughput"], ".2f")]
                for p in result["pairs"]]), "",
    ])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds a measurement (default 3)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be above 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    return run_benchmark("stage_overlap", SCRIPT, argv, parse_args, run, markdown)


if __name__ == "__main__":
    main()
