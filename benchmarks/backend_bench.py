"""Backend speed on this machine (DESIGN.md §9, §11): torch eager against ONNX Runtime on the same
inputs in one process, backends taking turns pass by pass; --threads intra-op threads for both.

  * stages: audio frontend per frame (any backend); generator per chunk (`StreamingGenerator.step`
    against the chunk graph in `OrtStep`); renderer, 1 and L frames a call (torch
    against renderer.onnx); as detail, each exported generator graph per call;
  * end to end over the sample speech (features -> motion -> uint8 frames, chunk by chunk): frames/s
    and per-chunk latency of torch eager, onnxruntime (ORT generator + torch renderer: the shipped CPU
    backend) and ORT everything, as multiples of torch eager; target: onnxruntime >= 2x torch eager;
  * equality: max |row - torch eager| of the clip's motion and frames (a first, untimed pass);
  * GPU: torch eager on CUDA where a device is present; TensorRT says why it did not run.

The graphs are exported (and validated against torch) into a temporary directory, or --onnx DIR.
    python benchmarks/backend_bench.py                      # live weights, 512 px, a few minutes
    python benchmarks/backend_bench.py --size 128 --repeats 1 --out /tmp/bb   # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from benchmarks.common import cpu_name, fmt, percentiles, progress, run_benchmark, stats, table
from benchmarks.generator_bench import EMOTION
from engine import assets
from engine.audio.frontend import AudioFeatures, AudioFrontend, extract_features
from engine.audio.io import load_audio
from engine.backends import ChunkStep
from engine.backends.cuda_graph import CudaGraphStep
from engine.backends.eager import TorchStep
from engine.backends.onnxruntime import OrtStep, ort_session
from engine.errors import UserError
from engine.io import sha256_file
from engine.motion.generator import StreamingGenerator, silence
from engine.motion.learned import LearnedDriver, LearnedOptions, load_generator, weights_sampler
from engine.render.renderer import Renderer, to_uint8
from engine.runtime import set_threads
from engine.timebase import SAMPLES_PER_FRAME
from export.onnx import export_all, export_graph
from export.runtime import code_digest
from export.specs import generator_specs, renderer_spec

SCRIPT = "benchmarks/backend_bench.py"
DEFAULT_OUT = Path(__file__).parent / "results" / "backend_bench"
TARGET_RATIO = 2.0  # the shipped ONNX Runtime backend's end-to-end frames/s over torch eager's
def learned(checkpoint: Path) -> LearnedOptions:
    """The shipped controls and sampler (4 Euler steps) with the weights' own guidance (weights_sampler)."""
    return LearnedOptions(**weights_sampler(checkpoint))
RENDER_FRAMES = 48  # frames of the clip's motion per renderer repeat
GRAPH_CALLS = 20  # calls per repeat of each exported generator graph
# end-to-end rows: (generator backend, renderer backend)
PIPELINES = {"torch eager": ("torch", "torch"), "onnxruntime": ("onnxruntime", "torch"),
             "ORT everything": ("onnxruntime", "onnxruntime"), "torch CUDA graph": ("torch CUDA", "torch CUDA"),
             "TensorRT": ("TensorRT", "TensorRT")}
NO_CUDA = "not run: no CUDA device on this machine"


def interleaved(calls: dict[str, Callable], inputs: list, repeats: int) -> dict[str, dict]:
    """ms per call of each of `calls` over `inputs` (after one warm-up pass each): median and range
    over `repeats` passes, the calls taking turns pass by pass (same inputs, same machine state)."""
    times = {name: [] for name in calls}
    for r in range(repeats + 1):
        for name, call in calls.items():
            t = time.perf_counter()
            for x in inputs:
                call(x)
            if r:
                times[name].append((time.perf_counter() - t) * 1000 / len(inputs))
    return {name: stats(ms) for name, ms in times.items()}


def torch_render(renderer: Renderer) -> Callable[[np.ndarray], np.ndarray]:
    """(B, D) raw motion -> (B, S, S, 3) uint8 frames (`Renderer.frames`: OpenCV's remap on CPU)."""
    device = renderer.image.device
    return torch.inference_mode()(lambda motion: renderer.frames(torch.from_numpy(motion).to(device)))


def ort_render(sessions: dict) -> Callable[[np.ndarray], np.ndarray]:
    """The same with the renderer's exported graphs, one per batch size (their shapes are static)."""
    return lambda motion: to_uint8(torch.from_numpy(
        sessions[len(motion)].run(None, {"coeffs": motion.astype(np.float32)})[0]))


def exported(onnx_dir: Path, checkpoint: Path, renderer: Renderer, chunk: int) -> dict[int, Path]:
    """Export every graph into `onnx_dir` unless an export of the same weights, sampler and size is
    there; the renderer at batch `chunk` too. Returns the renderer graph of each batch size."""
    manifest, want = onnx_dir / "manifest.json", {"checkpoint_sha256": sha256_file(checkpoint),
                                                  "graph_code_sha256": code_digest(),
                                                  "sampler": asdict(learned(checkpoint).sampler()), "renderer_size": renderer.size}
    if manifest.is_file():
        have = {k: json.loads(manifest.read_text()).get(k) for k in want}
        if have != want:
            raise UserError(f"{onnx_dir} holds an export of other weights, graph code, sampler or size ({have}, this "
                            f"run needs {want}); pass an empty --onnx directory or leave --onnx out")
    else:
        progress(f"exporting the graphs to {onnx_dir} ...")
        export_all(checkpoint, onnx_dir, learned(checkpoint).sampler(), size=renderer.size)
    paths = {1: onnx_dir / "renderer.onnx"}
    if chunk > 1:
        paths[chunk] = onnx_dir / f"renderer_batch{chunk}.onnx"
        if not paths[chunk].is_file():
            export_graph(renderer_spec(renderer, chunk), paths[chunk])
    return paths


def clip_windows(features: AudioFeatures, chunk: int, lookahead: int) -> list[AudioFeatures]:
    """Each chunk's L + K frames of features, the clip's end padded with silence (as LearnedDriver.drive)."""
    padded = AudioFeatures.concat([features, silence(-len(features) % chunk + lookahead)])
    return [padded[s : s + chunk + lookahead] for s in range(0, len(features), chunk)]


def equality(drivers: dict, renders: dict, windows: list) -> tuple[dict, np.ndarray]:
    """One untimed pass over the clip, every row in lockstep: max |row - torch eager| of its motion
    and uint8 frames, and the frames' mean; and torch eager's motion."""
    diffs, motion = {name: {"motion": 0.0, "frames": 0, "frames_mean": 0.0} for name in drivers}, []
    for driver in drivers.values():
        driver.reset()
    for w in windows:
        out = {name: driver.step(w) for name, driver in drivers.items()}
        frames = {name: renders[PIPELINES[name][1]](m).astype(np.int16) for name, m in out.items()}
        for name in drivers:
            diff = np.abs(frames[name] - frames["torch eager"])
            diffs[name]["motion"] = max(diffs[name]["motion"], float(np.abs(out[name] - out["torch eager"]).max()))
            diffs[name]["frames"] = max(diffs[name]["frames"], int(diff.max()))
            diffs[name]["frames_mean"] += float(diff.mean()) / len(windows)
        motion.append(out["torch eager"])
    return diffs, np.concatenate(motion)


def end_to_end(drivers: dict, renders: dict, windows: list, repeats: int) -> dict:
    """The clip chunk by chunk (features -> motion -> uint8 frames) per row, rows taking turns."""
    fps, chunk_s = {name: [] for name in drivers}, {name: [] for name in drivers}
    for _ in range(repeats):
        for name, driver in drivers.items():
            render, frames = renders[PIPELINES[name][1]], 0
            driver.reset()
            start = time.perf_counter()
            for w in windows:
                t = time.perf_counter()
                frames += len(render(driver.step(w)))
                chunk_s[name].append(time.perf_counter() - t)
            fps[name].append(frames / (time.perf_counter() - start))
    return {name: {"frames_per_s": stats(fps[name]), "frames_per_s_passes": fps[name],
                   "chunk_latency_ms": percentiles(chunk_s[name])} for name in drivers}


def gpu_status() -> dict:
    """Whether the GPU rows can run: "run", or why not."""
    from engine.backends.tensorrt import runtime_unavailable

    cuda, trt = torch.cuda.is_available(), runtime_unavailable()
    return {"cuda": cuda, "device": torch.cuda.get_device_name() if cuda else None,
            "torch CUDA graph": "run" if cuda else NO_CUDA,
            "TensorRT": "run" if trt is None else f"not run: {trt}" if cuda else NO_CUDA}


class _RendererEngine:
    """A renderer engine behind ONNX Runtime's `run(None, feed)`, for ort_render."""

    def __init__(self, path: Path):
        from engine.backends.tensorrt import TensorRTGraph

        self.graph = TensorRTGraph(path)

    def run(self, _, feed: dict) -> list[np.ndarray]:
        return [self.graph.run(feed)["frames"]]


def tensorrt_backend(onnx_dir: Path, chunk: int) -> tuple[ChunkStep, Callable]:
    """The speech and chunk graphs and the renderers (1 and L frames a call) as TensorRT engines in
    onnx_dir/tensorrt."""
    from engine.backends.tensorrt import TensorRTStep
    from export.runtime import build_engine

    batches = {1: "renderer", chunk: f"renderer_batch{chunk}" if chunk > 1 else "renderer"}
    for name in {"speech", "chunk", *batches.values()}:
        build_engine(onnx_dir, name)
    return TensorRTStep(onnx_dir), ort_render({b: _RendererEngine(onnx_dir / "tensorrt" / f"{name}.engine")
                                               for b, name in batches.items()})


def stage(frames_per_call: int, ms: dict[str, dict]) -> dict:
    return {"frames_per_call": frames_per_call, "ms_per_call": ms,
            "frames_per_s": {b: frames_per_call * 1000 / s["median"] for b, s in ms.items()}}


def bench_stages(samples: np.ndarray, models: dict, renders: dict, motion: np.ndarray, windows: list,
                 chunk: int, repeats: int) -> dict:
    hop = chunk * SAMPLES_PER_FRAME
    pieces = [samples[i : i + hop] for i in range(0, len(samples) - hop + 1, hop)]
    stages = {"audio frontend": stage(chunk, interleaved({"any": AudioFrontend().push}, pieces, repeats))}
    generators = {b: StreamingGenerator(step) for b, step in models.items()}
    stages["generator"] = stage(chunk, interleaved({b: (lambda w, g=g: g.step(w, EMOTION))
                                                    for b, g in generators.items()}, windows, repeats))
    for batch in dict.fromkeys((1, chunk)):
        calls = [motion[i : i + batch] for i in range(0, RENDER_FRAMES - batch + 1, batch)]
        stages[f"renderer, {batch} a call"] = stage(batch, interleaved(
            renders, calls, repeats))
    return stages


def bench_graphs(graphs: dict, repeats: int) -> dict:
    """Each exported generator graph per call on its dummy inputs: the torch module against ORT."""
    detail = {}
    for name, (spec, session) in graphs.items():
        feed = spec.dummy()
        numpy_feed = {n: v.numpy() for n, v in feed.items()}
        detail[name] = interleaved({"torch": lambda _, s=spec, f=feed: s.reference(f),
                                    "onnxruntime": lambda _, s=session, f=numpy_feed: s.run(None, f)},
                                   [None] * GRAPH_CALLS, repeats)
    return detail


def run(args: argparse.Namespace, command: str) -> dict:
    load = os.getloadavg()[0]
    samples = load_audio(assets.SAMPLE_SPEECH)
    features = extract_features(samples)
    set_threads(args.threads)  # after the frontend: importing silero-vad sets 1 thread process-wide
    model, gpu, options = load_generator(args.checkpoint), gpu_status(), learned(args.checkpoint)
    renderer = Renderer.from_photo(assets.DEFAULT_PORTRAIT, args.size)
    cfg = model.config
    with contextlib.ExitStack() as stack:
        onnx_dir = args.onnx or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="backend_bench_")))
        onnx_dir.mkdir(parents=True, exist_ok=True)
        sessions = {b: ort_session(p, args.threads) for b, p in exported(onnx_dir, args.checkpoint, renderer,
                                                                         cfg.chunk).items()}
        graphs = {s.name: (s, ort_session(onnx_dir / f"{s.name}.onnx", args.threads))
                  for s in generator_specs(model, options.sampler())}
        models = {"torch": TorchStep(model, options.sampler()), "onnxruntime": OrtStep(onnx_dir, args.threads)}
        renders = {"torch": torch_render(renderer), "onnxruntime": ort_render(sessions)}
        if gpu["torch CUDA graph"] == "run":
            models["torch CUDA"] = CudaGraphStep(copy.deepcopy(model).to("cuda"), options.sampler())
            renders["torch CUDA"] = torch_render(copy.deepcopy(renderer).to("cuda"))
        if gpu["TensorRT"] == "run":
            models["TensorRT"], renders["TensorRT"] = tensorrt_backend(onnx_dir, cfg.chunk)
        drivers = {name: LearnedDriver(models[g], options) for name, (g, _) in PIPELINES.items() if g in models}
        windows = clip_windows(features, cfg.chunk, cfg.lookahead)

        progress("equality pass (also the warm-up) ...")
        diffs, motion = equality(drivers, renders, windows)
        progress("stages ...")
        stages = bench_stages(samples, models, renders, motion, windows, cfg.chunk, args.repeats)
        graph_ms = bench_graphs(graphs, args.repeats)
        progress("end to end ...")
        e2e = end_to_end(drivers, renders, windows, args.repeats)
    frontend_ms = stages["audio frontend"]["ms_per_call"]["any"]["median"] / cfg.chunk  # per frame
    for name, row in e2e.items():
        fps = row["frames_per_s"]["median"]
        row["frames_per_s_with_frontend"] = 1000 / (1000 / fps + frontend_ms)
        # paired pass by pass (the rows take turns), so a pass slowed by the machine slows both sides
        ratios = [a / b for a, b in zip(row["frames_per_s_passes"], e2e["torch eager"]["frames_per_s_passes"])]
        row["vs_torch_eager"], row["vs_torch_eager_passes"] = float(np.median(ratios)), ratios
        row["max_abs_diff"] = diffs[name]
    ratio = e2e["onnxruntime"]["vs_torch_eager"]
    return {
        "command": command, "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
                    "onnxruntime": onnxruntime.__version__, "ort_providers": onnxruntime.get_available_providers(),
                    "python": platform.python_version(), "load_average_at_start": load, "gpu": gpu},
        "checkpoint": os.path.relpath(args.checkpoint), "config": cfg.to_dict(), "sampler": asdict(options.sampler()),
        "renderer_px": args.size, "repeats": args.repeats,
        "clip": {"frames": len(features), "chunks": len(windows), "frames_rendered": len(windows) * cfg.chunk},
        "stages": stages, "graphs": graph_ms, "end_to_end": e2e,
        "target": {"ratio": ratio, "target": TARGET_RATIO, "met": ratio >= TARGET_RATIO},
    }


def cell(s: dict, spec: str = ".2f") -> str:
    return f"{s['median']:{spec}} ({s['min']:{spec}} – {s['max']:{spec}})"


def speedup(ms: dict, backend: str) -> str:
    return f"{ms['torch']['median'] / ms[backend]['median']:.2f}x" if backend in ms and "torch" in ms else "–"


def markdown(result: dict) -> str:
    m, c, s, t, clip = (result[k] for k in ("machine", "config", "sampler", "target", "clip"))
    gpu, stages, reps = m["gpu"], dict(result["stages"]), result["repeats"]
    frontend = stages.pop("audio frontend")
    fe = {k: v / frontend["frames_per_call"] for k, v in frontend["ms_per_call"]["any"].items() if k != "runs"}
    backends = list(stages["generator"]["ms_per_call"])
    stage_rows = [[name, st["frames_per_call"], *(cell(st["ms_per_call"][b]) for b in backends),
                   *(f"{st['frames_per_s'][b]:.0f}" for b in backends),
                   *(speedup(st["ms_per_call"], b) for b in backends[1:])] for name, st in stages.items()]
    graph_rows = [[name, cell(ms["torch"], ".3f"), cell(ms["onnxruntime"], ".3f"), speedup(ms, "onnxruntime")]
                  for name, ms in result["graphs"].items()]
    e2e_rows = [[name, *PIPELINES[name], cell(r["frames_per_s"], ".1f"), f"{r['frames_per_s_with_frontend']:.1f}",
                 " / ".join(fmt(r["chunk_latency_ms"][k], ".1f") for k in ("p50", "p95", "max")),
                 f"**{r['vs_torch_eager']:.2f}x** ({min(r['vs_torch_eager_passes']):.2f} – "
                 f"{max(r['vs_torch_eager_passes']):.2f})", f"{r['max_abs_diff']['motion']:.1e}",
                 f"{r['max_abs_diff']['frames']} ({r['max_abs_diff']['frames_mean']:.3f})"]
                for name, r in result["end_to_end"].items()]
    e2e_rows += [[name, *PIPELINES[name], gpu[name], *["–"] * 5] for name in ("torch CUDA graph", "TensorRT")
                 if gpu[name] != "run"]
    return "\n".join([
        "# Backend benchmark", "",
        f"Command: `{result['command']}`  ", f"Date: {result['date']}  ",
        (f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} intra-op thread(s) for torch and ONNX Runtime "
         f"alike, torch {m['torch']}, onnxruntime {m['onnxruntime']}, load average {m['load_average_at_start']:.2f} "
         "at start  "),
        (f"Generator: {result['checkpoint']} (L={c['chunk']}, K={c['lookahead']}, {c['n_layers']} layers, "
         f"d={c['d_model']}), {s['steps']} Euler steps, guidance {s['guidance_audio']:g}/{s['guidance_emotion']:g}. "
         f"Renderer: {result['renderer_px']} px. Audio: the sample speech, {clip['frames']} frames, "
         f"{clip['chunks']} chunks."), "",
        (f"The shipped CPU backend (ORT generator + torch renderer) end to end: **{t['ratio']:.2f}x** torch eager; "
         f"target >= {t['target']:g}x: **{'met' if t['met'] else 'missed'}**."), "",
        "## End to end", "",
        ("The sample speech chunk by chunk: features -> motion (`LearnedDriver.step`) -> uint8 frames (the chunk's "
         f"L frames in one renderer call). frames/s: median (range) over {reps} pass(es), then with the audio "
         "frontend's cost per frame added. vs torch eager: the median (range) of the ratio pass by pass (the "
         "rows take turns, so each ratio compares one machine state). Chunk latency: features -> frames, every "
         "chunk of every pass. Max |difference| from torch eager over the whole clip (a first, untimed pass): "
         "motion in raw units, frames in 8-bit grey levels (mean in brackets). The torch renderer's uint8 path "
         "(`Renderer.frames`) samples with OpenCV's remap; ONNX Runtime runs the float graph (`Renderer.forward`) "
         "and rounds."), "",
        *table(["row", "generator", "renderer", "frames/s", "with frontend", "chunk latency p50 / p95 / max ms",
                "vs torch eager", "max motion diff", "max frame diff (mean)"], e2e_rows), "",
        "## Stages", "",
        (f"Audio frontend (streaming, {frontend['frames_per_call']} frames a push; any backend): "
         f"{cell(fe)} ms per frame, {frontend['frames_per_s']['any']:.0f} frames/s."), "",
        (f"ms per call: median (range) over {reps} pass(es). Generator: `step` over the clip's chunks on a running "
         "stream (torch `StreamingGenerator` against the chunk graph in `OrtStep`). Renderer: the "
         f"first {RENDER_FRAMES} frames of the clip's motion, to uint8. Speed-up: torch ms / that backend's ms."), "",
        *table(["stage", "frames a call", *(f"{b} ms" for b in backends), *(f"{b} frames/s" for b in backends),
                *(f"{b} speed-up" for b in backends[1:])], stage_rows), "",
        "## Exported generator graphs (detail)", "",
        (f"One call on the graph's dummy inputs (batch 1), {GRAPH_CALLS} calls a pass: the torch module it was "
         "exported from against its ONNX Runtime session; chunk = embed + every Euler step + commit."), "",
        *table(["graph", "torch ms", "onnxruntime ms", "speed-up"], graph_rows), "",
    ])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=assets.FAST_MOTION,
                        help="generator weights (default engine/assets/motion_fast.safetensors: the live presets')")
    parser.add_argument("--size", type=int, default=512, help="renderer resolution in px (default 512)")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads of torch and ONNX Runtime alike (default 1: one per real-time worker)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per measurement (default 5)")
    parser.add_argument("--onnx", type=Path, metavar="DIR",
                        help="export the graphs here and reuse them on later runs (default: a temporary directory)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="writes OUT.json and OUT.md (default benchmarks/results/backend_bench)")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    return run_benchmark("backend_bench", SCRIPT, argv, parse_args, run, markdown)


if __name__ == "__main__":
    main()
