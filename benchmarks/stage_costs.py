"""What a live session's stages cost per call on this CPU, alone and batched (issue 14's capacity work).

One thread, the balanced preset's generator on ONNX Runtime and the 512 px renderer, median over
--repeats passes of --calls calls each:
  * batch costs: the speech encoder's and the chunk graph's ms per stream at 1, 2, 4 and 6 streams a
    call, the renderer's ms per frame at 1, 2, 4 and 8 frames a call (what batching across sessions
    could save when their calls meet);
  * the speech encoder's last-block trim: `frames` (the last block computes only the chunk's tokens)
    against the whole window's output sliced, in torch and exported to ONNX Runtime as the speech graph
    is (export.onnx.export_graph), and the largest difference of their outputs;
  * the cache: encoder, chunk graph and renderer called in turn (as one session's chunk does) against
    each called on its own, ms per call.

    python benchmarks/stage_costs.py --out benchmarks/results/stage_costs
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import cpu_name, fmt, preset_step, progress, run_benchmark, table
from engine import assets
from engine.audio.speech import TOKENS_PER_FRAME, load_speech_encoder
from engine.face.analysis import analyze_portrait
from engine.face.rig import Rig
from engine.motion import spec
from engine.motion.model import Conditions
from engine.render.renderer import Renderer
from engine.runtime import set_threads
from engine.stream import PRESETS
from export.onnx import export_graph
from export.specs import generator_specs

SCRIPT = "benchmarks/stage_costs.py"
DEFAULT_OUT = Path(__file__).parent / "results" / "stage_costs"


def timed(calls: int, repeats: int, *fns: Callable[[], object]) -> list[float]:
    """Median ms per call of each function; with several, they are called in turn (one call each, round robin)."""
    for fn in fns:
        fn()
    passes = [[0.0] * len(fns) for _ in range(repeats)]
    for times in passes:
        for _ in range(calls):
            for i, fn in enumerate(fns):
                start = time.perf_counter()
                fn()
                times[i] += time.perf_counter() - start
    return [1000 * statistics.median(p[i] for p in passes) / calls for i in range(len(fns))]


def inputs(step, streams: int, rng: np.random.Generator):
    cfg = step.config
    mel = torch.from_numpy(rng.standard_normal((streams, cfg.speech_window, 4, 80)).astype(np.float32))
    cond = Conditions(speech=step.encode(mel), prosody=torch.randn(streams, cfg.audio_frames, 4),
                      stats=torch.randn(streams, 8), audio_on=torch.ones(streams, dtype=torch.bool),
                      emotion=torch.zeros(streams, dtype=torch.long), ref=torch.randn(streams, cfg.motion_dim))
    return mel, cond, torch.randn(streams, cfg.chunk, cfg.motion_dim), step.empty_cache(streams)


def motion(frames: int, rng: np.random.Generator) -> torch.Tensor:
    """Speech-like poses: a bit of everything, mouth open."""
    m = np.tile(spec.neutral(), (frames, 1)) + 0.1 * rng.random((frames, spec.D)) * (spec.HIGH - spec.LOW)
    return torch.from_numpy(np.clip(m, spec.LOW, spec.HIGH).astype(np.float32))


class WholeWindow(torch.nn.Module):
    """The speech graph as it was before the trim: every token of the window, then the chunk's sliced."""

    def __init__(self, encoder: torch.nn.Module, frames: int):
        super().__init__()
        self.encoder, self.frames = encoder, frames

    def forward(self, mel):
        tokens = self.encoder(mel.flatten(1, 2))[:, -self.frames * TOKENS_PER_FRAME:]
        return tokens.reshape(mel.shape[0], self.frames, TOKENS_PER_FRAME, -1)


def trim_on_onnxruntime(step, calls: int, repeats: int) -> dict:
    """ms per call of the exported speech graph, trimmed and whole-window, and their largest difference."""
    from engine.backends.onnxruntime import ort_session
    from engine.motion.learned import load_generator

    model = load_generator(PRESETS["balanced"].weights)
    spec = next(g for g in generator_specs(model, step.sampler) if g.name == "speech")
    whole = dataclasses.replace(spec, module=WholeWindow(spec.module.encoder, spec.module.frames))
    mel = {"mel": spec.dummy()["mel"].numpy()}
    with tempfile.TemporaryDirectory() as tmp:
        sessions = []
        for name, graph in (("trimmed", spec), ("whole", whole)):
            export_graph(graph, Path(tmp) / f"{name}.onnx")
            sessions.append(ort_session(Path(tmp) / f"{name}.onnx"))
        trimmed, full = timed(calls, repeats, *(lambda s=s: s.run(None, mel) for s in sessions))
        outputs = [s.run(None, mel)[0] for s in sessions]
    return {"whole window": full, "last block trimmed": trimmed,
            "max_difference": float(np.abs(outputs[0] - outputs[1]).max())}


def run(args: argparse.Namespace, command: str) -> dict:
    rng = np.random.default_rng(0)
    step = preset_step(PRESETS["balanced"], "onnxruntime", "cpu")
    renderer = Renderer(Rig(analyze_portrait(assets.DEFAULT_PORTRAIT, size=512))).eval()
    set_threads(1)
    n, r = args.calls, args.repeats
    batches = []
    with torch.inference_mode():
        for streams in (1, 2, 4, 6):
            mel, cond, noise, cache = inputs(step, streams, rng)
            encode = timed(n, r, lambda mel=mel: step.encode(mel))[0]
            chunk = timed(n, r, lambda args=(cond, noise, cache): step(*args))[0]
            batches.append({"streams": streams, "encoder_ms_per_stream": encode / streams,
                            "chunk_ms_per_stream": chunk / streams})
        renders = []
        for frames in (1, 2, 4, 8):
            coeffs = motion(frames, rng)
            renders.append({"frames": frames, "ms_per_frame": timed(max(n // frames, 2), r,
                                                                    lambda c=coeffs: renderer.frames(c))[0] / frames})
        progress("batch costs done")
        encoder, frames_ = load_speech_encoder(step.config.speech_layers), step.config.audio_frames
        mel = torch.from_numpy(rng.standard_normal((1, step.config.speech_window, 4, 80)).astype(np.float32))
        flat = mel.flatten(1, 2)
        full, trimmed = timed(n, r, lambda: encoder(flat)[:, -frames_ * TOKENS_PER_FRAME:],
                              lambda: encoder.frames(mel, frames_))
        ort_trim = trim_on_onnxruntime(step, n, r)
        mel, cond, noise, cache = inputs(step, 1, rng)
        coeffs = motion(2, rng)
        stages = (lambda: step.encode(mel), lambda: step(cond, noise, cache), lambda: renderer.frames(coeffs))
        alone = [timed(n, r, fn)[0] for fn in stages]
        in_turn = timed(n, r, *stages)
    return {"command": command, "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "load_average_at_start": os.getloadavg()[0],
                        "onnxruntime": __import__("onnxruntime").__version__, "torch": torch.__version__},
            "calls": n, "repeats": r, "batches": batches, "renders": renders,
            "encoder_trim_torch_ms": {"whole window": full, "last block trimmed": trimmed},
            "encoder_trim_onnxruntime_ms": ort_trim,
            "cache": {"stages": ["speech encoder", "chunk graph", "renderer, 2 frames"], "alone_ms": alone,
                      "in_turn_ms": in_turn}}


def markdown(result: dict) -> str:
    m, cache = result["machine"], result["cache"]
    trim, ort = result["encoder_trim_torch_ms"], result["encoder_trim_onnxruntime_ms"]
    return "\n".join([
        "# Stage costs, alone and batched", "",
        f"Command: `{result['command']}`  ", f"Date: {result['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, load average {m['load_average_at_start']:.2f} at start, one "
        f"thread, onnxruntime {m['onnxruntime']}, torch {m['torch']}. Balanced preset's generator on ONNX Runtime, "
        f"512 px renderer. Median ms per call over {result['repeats']} passes of {result['calls']} calls.", "",
        "## Batched calls", "",
        *table(["streams a call", "speech encoder ms / stream", "chunk graph ms / stream"],
               [[b["streams"], fmt(b["encoder_ms_per_stream"], ".2f"), fmt(b["chunk_ms_per_stream"], ".2f")]
                for b in result["batches"]]), "",
        *table(["frames a call", "renderer ms / frame"],
               [[x["frames"], fmt(x["ms_per_frame"], ".2f")] for x in result["renders"]]), "",
        "## Speech encoder, last block trimmed", "",
        *table(["", "whole window, sliced ms", "last block trimmed ms"],
               [["torch", fmt(trim["whole window"], ".2f"), fmt(trim["last block trimmed"], ".2f")],
                ["ONNX Runtime (the exported speech graph)", fmt(ort["whole window"], ".2f"),
                 fmt(ort["last block trimmed"], ".2f")]]), "",
        f"Largest difference of the two ONNX Runtime graphs' outputs: {ort['max_difference']:.1e}.", "",
        "## Stages called in turn (one session's chunk) against alone", "",
        *table(["stage", "alone ms", "in turn ms"],
               [[s, fmt(a, ".2f"), fmt(t, ".2f")] for s, a, t in zip(cache["stages"], cache["alone_ms"],
                                                                      cache["in_turn_ms"])]),
        "",
    ])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=40, help="calls a pass (default 40)")
    parser.add_argument("--repeats", type=int, default=5, help="passes (default 5)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    if args.calls < 2 or args.repeats < 1:
        parser.error("--calls must be at least 2 and --repeats at least 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    return run_benchmark("stage_costs", SCRIPT, argv, parse_args, run, markdown)


if __name__ == "__main__":
    main()
