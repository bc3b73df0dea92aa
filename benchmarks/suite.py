"""`avatar bench`: frames per second, latency percentiles and per-stage cost for each backend and
preset on this machine (DESIGN.md §1, §11), as OUT.json, a Markdown table (OUT.md, also printed)
and a plot (OUT.png).

For every --backend and --preset:
  * live: one session in real time for --seconds after a warm-up, fed the sample speech as a
    browser microphone sends it (benchmarks/stream_bench.py's measurement): engine latency
    p50/p95/p99 against the preset's floor, sustained fps, first speech frame, CPU per session;
  * stages: the sample speech chunk by chunk, each stage timed over the whole clip, backends and
    stages taking turns pass by pass: audio frontend, generator (the learned driver's step),
    renderer (`render_batch` frames a call; the same on every backend); ms per chunk (median and
    range over passes) and what one core could sustain with them in sequence, as frames/s and a
    multiple of real time.

    avatar bench                                           # torch and onnxruntime, every preset, ~4 min
    avatar bench --backend onnxruntime --preset balanced --seconds 10 --out out/ort
    avatar bench --backend tensorrt --device cuda          # on an NVIDIA GPU

The deeper benchmarks behind it: benchmarks/stream_bench.py (concurrent sessions, the hour-long
drift check), backend_bench.py (every exported graph, ONNX Runtime against torch eager on one
input), generator_bench.py and render_bench.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import fmt, progress, run_benchmark, stats, table
from engine.cli import BACKENDS, PRESETS  # the names alone: no torch

PROG = "avatar bench"
STAGES = ("audio frontend", "speech encoder", "generator", "renderer")
IN_GENERATOR = ("speech encoder",)  # timed on its own, but also inside the generator's step: not added to totals
REAL_TIME_MS = 40.0  # one frame at 25 fps
STEADY_S = 2.0  # benchmarks.stream_bench.STEADY_S: the start of a session that fps leaves out


def bench_stages(renderer, backends: list[str], device: str, preset, samples: np.ndarray, features,
                 repeats: int) -> dict:
    """Per backend, ms per chunk of each stage over the clip: a median and range over `repeats` passes
    after a warm-up pass, backends and stages taking turns pass by pass (one machine state for all)."""
    import torch

    from benchmarks.backend_bench import clip_windows
    from benchmarks.common import preset_step
    from engine.audio.frontend import AudioFrontend
    from engine.motion.generator import speech_windows
    from engine.motion.learned import LearnedDriver, LearnedOptions, guidance_of
    from engine.timebase import SAMPLES_PER_FRAME

    calls, shape = {}, {}
    for backend in backends:
        step = preset_step(preset, backend, device)
        cfg = step.config
        driver = LearnedDriver(step, LearnedOptions(steps=preset.steps, **guidance_of(step.sampler)))
        windows = clip_windows(features, cfg.chunk, cfg.lookahead)
        hop = cfg.chunk * SAMPLES_PER_FRAME
        batch = min(preset.render_batch, cfg.chunk)
        pieces = [samples[i : i + hop] for i in range(0, len(samples) - hop + 1, hop)]
        motion = [_tensor(driver.step(w)) for w in windows]
        mels = speech_windows(features, cfg)[: len(windows)]
        calls[backend] = {
            "audio frontend": (AudioFrontend().push, pieces),
            "speech encoder": (lambda mel, s=step: s.encode(torch.as_tensor(mel)[None]), mels),
            "generator": (driver.step, windows, driver.reset),
            "renderer": (lambda m, b=batch: [renderer.frames(m[i : i + b]) for i in range(0, len(m), b)], motion),
        }
        shape[backend] = {"chunk": cfg.chunk, "render_batch": batch, "chunks": len(windows)}
    passes = {b: {stage: [] for stage in STAGES} for b in backends}
    for r in range(repeats + 1):
        for backend in backends:
            for stage, (call, inputs, *reset) in calls[backend].items():
                for before in reset:
                    before()
                start = time.perf_counter()
                for x in inputs:
                    call(x)
                if r:  # the first pass warms up
                    passes[backend][stage].append((time.perf_counter() - start) * 1000 / len(inputs))
    result = {}
    for backend in backends:
        ms = {stage: stats(v) for stage, v in passes[backend].items()}
        total = sum(s["median"] for stage, s in ms.items() if stage not in IN_GENERATOR)
        chunk = shape[backend]["chunk"]
        result[backend] = {**shape[backend], "ms_per_chunk": ms, "total_ms_per_chunk": total,
                           "frames_per_s": chunk * 1000 / total, "x_real_time": chunk * REAL_TIME_MS / total}
    return result


def _tensor(motion: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(motion, np.float32))


def run(args: argparse.Namespace, command: str) -> dict:
    import torch

    from benchmarks import stream_bench
    from engine import assets, backends
    from engine.audio.frontend import extract_features
    from engine.audio.io import load_audio
    from engine.render.renderer import Renderer
    from engine.runtime import resolve_device, set_threads
    from engine.stream.presets import get_preset

    resolve_device(args.device)  # a missing GPU or backend fails now, saying what to use instead
    for backend in args.backend:
        backends.check(backend, args.device)
    samples = load_audio(assets.SAMPLE_SPEECH)
    features = extract_features(samples)
    renderer = Renderer.from_photo(assets.DEFAULT_PORTRAIT, args.size, args.device)
    result = {"command": command, "backends": {}}
    for backend in args.backend:
        progress(f"{backend}: live sessions ...")
        live = stream_bench.run(stream_bench.parse_args([
            "--preset", *args.preset, "--seconds", str(args.seconds), "--starts", str(args.starts),
            "--max-sessions", "0", "--threads", str(args.threads), "--size", str(args.size),
            "--backend", backend, "--device", args.device]), command)
        result["backends"][backend] = {"presets": live["presets"], "stages": {}}
        result.setdefault("machine", live["machine"])
        result.setdefault("date", live["date"])
    set_threads(args.threads)
    for name in args.preset:
        progress(f"{name}: stages, {' and '.join(args.backend)} taking turns ...")
        with torch.inference_mode():
            stages = bench_stages(renderer, args.backend, args.device, get_preset(name), samples, features,
                                  args.repeats)
        for backend, s in stages.items():
            result["backends"][backend]["stages"][name] = s
    result["machine"].pop("backend", None)
    result.update(renderer_px=args.size, audio=live["audio"], seconds=args.seconds, repeats=args.repeats)
    return result


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# avatar bench", "",
        f"Command: `{result['command']}`  ", f"Date: {result['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch thread(s) per worker, torch "
        f"{m['torch']}, {m.get('gpu') or m['device']}; load average {m['load_average_at_start']:.2f} at start  ",
        f"Renderer: {result['renderer_px']} px. Live audio: {result['audio']}; {result['seconds']:g} s a preset.",
        "", "## Live sessions (one at a time, real time)", "",
        "Engine latency: a chunk's first sample arriving -> its first frame ready; its floor is the chunk and "
        "lookahead's audio plus the frontend's lookahead. First speech frame: the first packet pushed -> the "
        "first frame made from it released. CPU: process time over wall time, % of one core.", "",
    ]
    rows = []
    for backend, b in result["backends"].items():
        for p in b["presets"]:
            run = p["run"]
            lat = run["engine_latency_ms"]
            rows.append([backend, p["preset"], " / ".join(fmt(lat[k]) for k in ("p50", "p95", "p99")),
                         fmt(p["floor_ms"]), fmt(run["fps"], ".2f"), fmt(p["first_speech_frame_ms"]["median"]),
                         f"{p['cpu']['core_pct']:.0f}", f"{run['frames_late']} / {run['frames_dropped']}"])
    lines += table(["backend", "preset", "engine latency p50 / p95 / p99, ms", "floor, ms", "fps",
                    "first speech frame, ms", "CPU, % of a core", "late / dropped frames"], rows)
    lines += ["", f"## Stages (the sample speech chunk by chunk; median and range of {result['repeats']} passes)", "",
              ("ms per chunk; the generator's step includes the speech encoder, shown on its own too; frames/s: "
               "what one core sustains running frontend, generator and renderer in sequence."), ""]
    rows = []
    for backend, b in result["backends"].items():
        for name, s in b["stages"].items():
            ms = s["ms_per_chunk"]
            rows.append([backend, name, f"{s['chunk']} ({s['render_batch']} a render call)",
                         *(f"{ms[k]['median']:.2f} ({ms[k]['min']:.2f}–{ms[k]['max']:.2f})" for k in STAGES),
                         f"{s['total_ms_per_chunk']:.2f}", f"{s['frames_per_s']:.0f}", f"{s['x_real_time']:.1f}x"])
    lines += table(["backend", "preset", "frames a chunk", *STAGES, "total", "frames/s", "real time"], rows)
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Engine latency per preset and backend against its floor; each stage's ms per frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = list(result["backends"])
    presets = [p["preset"] for p in result["backends"][backends[0]]["presets"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(backends)
    x = np.arange(len(presets))
    for i, backend in enumerate(backends):
        runs = result["backends"][backend]["presets"]
        p50 = np.array([p["run"]["engine_latency_ms"]["p50"] for p in runs])
        p95 = np.array([p["run"]["engine_latency_ms"]["p95"] for p in runs])
        left.bar(x + i * width, p50, width, label=f"{backend} p50")
        left.errorbar(x + i * width, p50, yerr=[np.zeros_like(p50), p95 - p50], fmt="none", ecolor="black",
                      capsize=3)
    floors = [p["floor_ms"] for p in result["backends"][backends[0]]["presets"]]
    left.scatter(x + width * (len(backends) - 1) / 2, floors, marker="_", s=900, color="red", label="floor", zorder=3)
    left.set_xticks(x + width * (len(backends) - 1) / 2, presets)
    left.set_ylabel("engine latency, ms (bar p50, whisker p95)")
    left.set_ylim(0, 1.3 * max(p["run"]["engine_latency_ms"]["p95"] for b in backends
                               for p in result["backends"][b]["presets"]))
    left.legend(fontsize=8, loc="upper left", ncol=len(backends) + 1)
    bars = [(b, n, s) for b in backends for n, s in result["backends"][b]["stages"].items()]
    y, bottom = np.arange(len(bars)), np.zeros(len(bars))
    for stage in (s for s in STAGES if s not in IN_GENERATOR):
        per_frame = np.array([s["ms_per_chunk"][stage]["median"] / s["chunk"] for _, _, s in bars])
        right.barh(y, per_frame, left=bottom, label=stage)
        bottom += per_frame
    right.axvline(REAL_TIME_MS, color="red", linestyle="--", label="real time (40 ms)")
    right.set_yticks(y, [f"{b}\n{n}" for b, n, _ in bars], fontsize=8)
    right.set_xlabel("ms per frame, one core")
    right.legend(fontsize=8, loc="center right")
    fig.suptitle(f"avatar bench: {result['machine']['cpu']}, {result['renderer_px']} px", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", nargs="+", choices=BACKENDS, default=["torch", "onnxruntime"],
                        help="where the generator runs, each in turn (default: torch onnxruntime; tensorrt needs an "
                             "NVIDIA GPU). ONNX Runtime exports its graph on first use and caches it")
    parser.add_argument("--preset", nargs="+", choices=PRESETS, default=list(PRESETS),
                        help="latency presets to measure (default: all)")
    parser.add_argument("--seconds", type=float, default=20.0, help="each live session's length (default 20)")
    parser.add_argument("--starts", type=int, default=2,
                        help="extra short sessions per preset for the start-up figures (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the clip per stage (default 3)")
    parser.add_argument("--size", type=int, default=512, help="frame size in px (default 512)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and ONNX Runtime threads per worker (default 1, as `avatar serve` runs them)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="torch's device for the renderer and a torch generator (default cpu)")
    parser.add_argument("--out", type=Path, default=Path("out/bench"),
                        help="writes OUT.json, OUT.md and OUT.png (default out/bench)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 1 or args.starts < 0 or args.size < 16:
        parser.error("--repeats and --threads must be at least 1, --starts at least 0, --size at least 16")
    if args.seconds <= STEADY_S + 1:
        parser.error(f"--seconds must exceed {STEADY_S + 1:g}: fps is measured after the first {STEADY_S:g} s")
    if args.out.suffix in (".json", ".md", ".png"):
        args.out = args.out.with_suffix("")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    out = parse_args(argv).out  # before minutes of work: a bad option fails now
    plot(run_benchmark(PROG, PROG, argv, parse_args, run, markdown, prog=PROG), out.with_suffix(".png"))
    progress(f"wrote {out}.json, {out}.md and {out}.png")
    return 0


if __name__ == "__main__":
    main()
