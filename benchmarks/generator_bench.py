"""Learned motion generator speed on this machine (DESIGN.md §6, §11).

Measures `StreamingGenerator.step` (Euler sampling with classifier-free guidance, then the cache
commit: everything the generator does per chunk) and the streaming audio frontend:

  * grid: chunk L x Euler steps N x guidance off (1/1) and on: ms per chunk (median and range
    over repeats), frames/s, multiple of real time, and the latency floor (L + K) frames next to
    floor + compute (generator + frontend);
  * stream: one stream of --minutes of audio, chunk after chunk, per-chunk cost binned by stream
    position, against a generator without a KV cache that recomputes its context window before
    every chunk (same output, checked);
  * target: the shipped preset (MotionConfig and LearnedOptions defaults: 4 steps, audio guidance 2)
    at >= 4x real time.

Weights are random unless --checkpoint is given: the cost of a forward pass does not depend on
the weight values. Features are those of the bundled sample speech, tiled to length.

Writes OUT.json and OUT.md with the command that produced them:
    python benchmarks/generator_bench.py                 # full run, minutes on 2 cores
    python benchmarks/generator_bench.py --quick --out /tmp/gb   # smoke run, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.common import cpu_name, run_benchmark, stats
from engine import assets
from engine.audio.frontend import AudioFeatures, AudioFrontend, extract_features
from engine.audio.io import load_audio
from engine.backends.eager import TorchStep
from engine.io.checkpoint import load_model
from engine.motion import spec
from engine.motion.cache import KVCache
from engine.motion.generator import StreamingGenerator
from engine.motion.learned import LearnedOptions
from engine.motion.model import Conditions, MotionConfig, MotionTransformer
from engine.motion.sampler import SamplerOptions
from engine.timebase import FPS, SAMPLES_PER_FRAME

SCRIPT = "benchmarks/generator_bench.py"
DEFAULT_OUT = Path(__file__).parent / "results" / "generator_bench"
FRAME_MS = 1000 / FPS
TARGET_X_REALTIME = 4.0
EMOTION = "neutral"
FEATURES_SOURCE = "features of engine/assets/speech.wav (extract_features), tiled to length"
RANDOM_WEIGHTS = "random init (a forward pass costs the same whatever the weight values)"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run measures; --quick swaps in a tiny grid and a short stream."""

    chunks: tuple[int, ...]  # L values of the grid
    steps: tuple[int, ...]  # Euler step counts N of the grid
    guidance: tuple[float, float]  # (audio, emotion) guidance of the "on" rows
    repeats: int  # timed repeats per grid cell
    frames: int  # frames generated per timed repeat
    minutes: float  # length of the stream


SHIPPED = LearnedOptions().sampler()  # the pretrained weights' sampler; weights distilled without guidance run the "off" rows
GUIDED = (SHIPPED.guidance_audio, SHIPPED.guidance_emotion)  # the grid's "on" rows: the shipped scales
FULL = Plan(chunks=(1, 2, 4, 8), steps=(2, 4, 8), guidance=GUIDED, repeats=5, frames=100, minutes=10.0)
QUICK = Plan(chunks=(1, 4), steps=(2,), guidance=GUIDED, repeats=2, frames=8, minutes=10 / 60)


def speech_features(frames: int) -> AudioFeatures:
    """`frames` frames of features of the sample speech, tiled."""
    once = extract_features(load_audio(assets.SAMPLE_SPEECH))
    return AudioFeatures.concat([once] * -(-frames // len(once)))[:frames]


def speech_samples(n: int) -> np.ndarray:
    """`n` samples of the sample speech, tiled."""
    once = load_audio(assets.SAMPLE_SPEECH)
    return np.tile(once, -(-n // len(once)))[:n]


def chunk_features(features: AudioFeatures, config: MotionConfig, start: int, count: int) -> list[AudioFeatures]:
    """Inputs of `count` consecutive steps from frame `start`: L frames and their K lookahead frames each."""
    L, K = config.chunk, config.lookahead
    return [features[start + i * L : start + i * L + L + K] for i in range(count)]


# --- grid ------------------------------------------------------------------------------------------


def bench_step(model: MotionTransformer, options: SamplerOptions, features: AudioFeatures, plan: Plan) -> list[float]:
    """ms per chunk of each timed repeat, on a stream whose cache is full (steady state)."""
    cfg = model.config
    generator = StreamingGenerator(TorchStep(model, options))
    per_repeat = max(1, plan.frames // cfg.chunk)
    warm = cfg.context // cfg.chunk + 2  # fill the cache, then a couple more
    for f in chunk_features(features, cfg, 0, warm):
        generator.step(f, EMOTION)
    times, start = [], warm * cfg.chunk
    for _ in range(plan.repeats):
        inputs = chunk_features(features, cfg, start, per_repeat)
        t = time.perf_counter()
        for f in inputs:
            generator.step(f, EMOTION)
        times.append((time.perf_counter() - t) * 1000 / per_repeat)
        start += per_repeat * cfg.chunk
    return times


def bench_frontend(chunk: int, samples: np.ndarray, plan: Plan) -> list[float]:
    """ms per chunk of pushing L frames of samples into a streaming AudioFrontend, per repeat."""
    frontend, hop = AudioFrontend(), chunk * SAMPLES_PER_FRAME
    per_repeat = max(1, plan.frames // chunk)
    pieces = [samples[i * hop : (i + 1) * hop] for i in range((plan.repeats + 1) * per_repeat)]
    for p in pieces[:per_repeat]:  # warm-up
        frontend.push(p)
    times = []
    for r in range(1, plan.repeats + 1):
        t = time.perf_counter()
        for p in pieces[r * per_repeat : (r + 1) * per_repeat]:
            frontend.push(p)
        times.append((time.perf_counter() - t) * 1000 / per_repeat)
    return times


def grid_models(base: MotionConfig, chunks: tuple[int, ...], trained: MotionTransformer | None):
    """{L: (model, weights label)}: the checkpoint for its own L, random init elsewhere."""
    models = {}
    for L in chunks:
        if trained is not None and trained.config.chunk == L:
            models[L] = (trained, "checkpoint")
            continue
        config = dataclasses.replace(base, chunk=L)
        if config.context % L:
            raise ValueError(f"chunk {L} does not divide the context window W={config.context}; "
                             "pick chunk sizes that tile the window (e.g. 1, 2, 4, 8 for W=48)")
        torch.manual_seed(0)
        models[L] = (MotionTransformer(config).eval(), "random")
    return models


def bench_grid(models: dict, plan: Plan, features: AudioFeatures, samples: np.ndarray) -> tuple[list[dict], dict]:
    guidance = {"off": (1.0, 1.0), "on": plan.guidance}
    frontend = {L: stats(bench_frontend(L, samples, plan)) for L in models}
    rows = []
    cells = [(L, n, g) for L in models for n in plan.steps for g in guidance]
    for L, steps, g in tqdm(cells, desc="grid", unit="cell", leave=False):
        model, weights = models[L]
        cfg = model.config
        ms = stats(bench_step(model, SamplerOptions(steps, *guidance[g]), features, plan))
        fps = {"median": L * 1000 / ms["median"], "min": L * 1000 / ms["max"], "max": L * 1000 / ms["min"]}
        floor = (cfg.chunk + cfg.lookahead) * FRAME_MS
        rows.append({
            "chunk": L, "lookahead": cfg.lookahead, "steps": steps, "guidance": g,
            "guidance_audio": guidance[g][0], "guidance_emotion": guidance[g][1], "weights": weights,
            "ms_per_chunk": ms,
            "frames_per_s": fps,  # from the ms per chunk: the median's and the range's ends
            "x_realtime": {k: v / FPS for k, v in fps.items()},
            "frontend_ms_per_chunk": frontend[L]["median"],
            "latency_floor_ms": floor,
            "latency_ms": floor + ms["median"] + frontend[L]["median"],
        })
    return rows, frontend


# --- stream ----------------------------------------------------------------------------------------


def recompute_cache(model: MotionTransformer, window: deque, next_frame: int) -> KVCache:
    """The cache rebuilt from scratch: keys/values of the window's committed chunks (oldest first),
    from their clean motion and conditions, for a chunk starting at `next_frame`. A committed chunk
    attends only to itself, so all of them go through `commit` side by side in one batched call
    (B = chunks in the window): the cheapest way to recompute the window."""
    cfg = model.config
    fresh = KVCache.empty(cfg, 1)
    if not window:
        return fresh
    n, L = len(window), cfg.chunk
    clean = torch.cat([c for c, _ in window])  # (n, L, D)
    cond = Conditions(*(torch.cat(parts) for parts in zip(*(c for _, c in window))))
    batched = model.commit(clean, cond, KVCache.empty(cfg, n))
    k, v = (z[:, :, :, -L:] for z in (batched.keys, batched.values))  # (layers, n, heads, L, hd)
    k, v = (z.transpose(1, 2).reshape(cfg.n_layers, 1, cfg.n_heads, n * L, -1) for z in (k, v))  # frames in order
    cache = fresh.push(k, v)  # slots at frames -W+nL .. nL-1, the last n*L valid
    return cache._replace(pos=cache.pos + (next_frame - n * L))


class RecomputingGenerator:
    """The generator without a KV cache: it keeps the clean motion and conditions of its last
    W / L chunks and, before every step, recomputes the window's keys/values (recompute_cache)."""

    def __init__(self, model: MotionTransformer):
        self.generator = StreamingGenerator(TorchStep(model, SHIPPED))
        self.window = deque(maxlen=model.config.context // model.config.chunk)  # (clean (1, L, D), Conditions)
        self.next_frame = 0

    def step(self, features: AudioFeatures) -> np.ndarray:
        g = self.generator
        cond = g.conditions(features, EMOTION)
        g.cache = recompute_cache(g.chunk_step.model, self.window, self.next_frame)
        motion = g.step(features, EMOTION)
        self.window.append((torch.from_numpy(spec.normalize(motion))[None], cond))
        self.next_frame += g.config.chunk
        return motion


def duration(frames: int) -> str:
    seconds = frames / FPS
    return f"{seconds / 60:g} minutes" if seconds >= 120 else f"{seconds:g} s"


def stream_frames(plan: Plan) -> int:
    return round(plan.minutes * 60 * FPS)


def stream_bins(frames: int) -> list[tuple[int, int, str]]:
    """(first frame, end frame, label) of the position bins: whole minutes when the stream has
    at least 2, else 10 equal bins labelled in seconds."""
    minute = 60 * FPS
    if frames >= 2 * minute:
        return [(a, min(a + minute, frames), f"{a // minute}–{-(-min(a + minute, frames) // minute)} min")
                for a in range(0, frames, minute)]
    width = max(1, -(-frames // 10))
    return [(a, min(a + width, frames), f"{a / FPS:.1f}–{min(a + width, frames) / FPS:.1f} s")
            for a in range(0, frames, width)]


def summarize(ms: np.ndarray) -> dict:
    return {"median": float(np.median(ms)), "p95": float(np.percentile(ms, 95)), "max": float(ms.max())}


def bench_stream(model: MotionTransformer, plan: Plan, features: AudioFeatures) -> dict:
    """One stream, chunk after chunk, with the KV cache and without (interleaved, same inputs and noise)."""
    cfg = model.config
    L, W = cfg.chunk, cfg.context
    if W % L:
        raise ValueError(f"the stream needs a chunk L={L} that divides the context window W={W}")
    n_chunks = max(1, stream_frames(plan) // L)
    inputs = chunk_features(features, cfg, 0, n_chunks)
    warm_cached, warm_uncached = StreamingGenerator(TorchStep(model, SHIPPED)), RecomputingGenerator(model)
    for f in inputs[: W // L + 2]:  # warm-up on a throwaway pair, past the window
        warm_cached.step(f, EMOTION)
        warm_uncached.step(f)
    cached, uncached = StreamingGenerator(TorchStep(model, SHIPPED)), RecomputingGenerator(model)
    ms_cached, ms_uncached, max_diff = np.zeros(n_chunks), np.zeros(n_chunks), 0.0
    for i, f in enumerate(tqdm(inputs, desc="stream", unit="chunk", leave=False)):
        t = time.perf_counter()
        motion = cached.step(f, EMOTION)
        ms_cached[i] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        recomputed = uncached.step(f)
        ms_uncached[i] = (time.perf_counter() - t) * 1000
        max_diff = max(max_diff, float(np.abs(motion - recomputed).max()))

    position = np.arange(n_chunks) * L
    fill = position < W
    bins = []
    for a, b, label in stream_bins(n_chunks * L):
        inside = (position >= a) & (position < b)
        bins.append({"label": label, "start_s": a / FPS, "end_s": b / FPS, "chunks": int(inside.sum()),
                     "cached_ms": summarize(ms_cached[inside]), "no_cache_ms": summarize(ms_uncached[inside])})
    return {
        "minutes": n_chunks * L / FPS / 60, "frames": n_chunks * L, "chunk": L, "context": W,
        "features": FEATURES_SOURCE,
        "bins": bins,
        "cache_filling": {"frames": W, "cached_ms": summarize(ms_cached[fill]),
                          "no_cache_ms": summarize(ms_uncached[fill])},
        "overall": {"cached_ms": summarize(ms_cached), "no_cache_ms": summarize(ms_uncached)},
        "max_abs_motion_diff": max_diff,
    }


# --- report ----------------------------------------------------------------------------------------


def run(args: argparse.Namespace, command: str) -> dict:
    plan = dataclasses.replace(
        QUICK if args.quick else FULL,
        **{k: v for k, v in {"repeats": args.repeats, "minutes": args.minutes}.items() if v is not None},
    )
    base = MotionConfig.tiny() if args.tiny else MotionConfig()
    trained, weights = None, RANDOM_WEIGHTS
    if args.checkpoint:
        trained, _, _ = load_model(args.checkpoint, MotionTransformer, MotionConfig)
        weights = f"checkpoint {args.checkpoint} for L={trained.config.chunk}; elsewhere {RANDOM_WEIGHTS}"
    preset = trained.config if trained is not None else base  # the stream and the target run this one
    models = grid_models(base, tuple(sorted({*plan.chunks, preset.chunk})), trained)

    configs = [m.config for m, _ in models.values()]
    longest_l, lookahead, context = max(models), max(c.lookahead for c in configs), max(c.context for c in configs)
    grid_frames = context + (plan.repeats + 3) * (plan.frames + longest_l)
    features = speech_features(max(grid_frames, stream_frames(plan)) + longest_l + lookahead)
    # After the frontend has run once: importing silero-vad sets torch to 1 thread process-wide.
    torch.set_num_threads(args.threads)
    grid, frontend = bench_grid(models, plan, features, speech_samples(grid_frames * SAMPLES_PER_FRAME))
    stream = bench_stream(models[preset.chunk][0], plan, features)

    x = stream["chunk"] / (stream["overall"]["cached_ms"]["median"] / 1000) / FPS
    with_frontend = stream["chunk"] / ((stream["overall"]["cached_ms"]["median"]
                                        + frontend[preset.chunk]["median"]) / 1000) / FPS
    return {
        "command": command,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "weights": weights,
        "config": preset.to_dict(),
        "sampler_defaults": dataclasses.asdict(SHIPPED),
        "plan": dataclasses.asdict(plan),
        "grid": grid,
        "frontend_ms_per_chunk": {str(L): s for L, s in frontend.items()},
        "stream": stream,
        "target": {"x_realtime": x, "x_realtime_with_frontend": with_frontend, "target": TARGET_X_REALTIME,
                   "met": x >= TARGET_X_REALTIME},
    }


def preset(c: dict) -> str:
    return (f"L={c['chunk']} frames per chunk, K={c['lookahead']} lookahead, P={c['audio_past']} past audio, "
            f"W={c['context']} cached frames, d={c['d_model']}, {c['n_heads']} heads, {c['n_layers']} layers")


def target_line(result: dict) -> str:
    t = result["target"]
    d = result["sampler_defaults"]
    return (f"The shipped preset ({d['steps']} Euler steps, guidance {d['guidance_audio']:g}/{d['guidance_emotion']:g}: "
            "LearnedOptions defaults), median over the stream: "
            f"{t['x_realtime']:.1f}x real time ({t['x_realtime_with_frontend']:.1f}x with the audio frontend); "
            f"target >= {t['target']:g}x: **{'met' if t['met'] else 'NOT met'}**.")


def grid_row(r: dict) -> str:
    ms, trained = r["ms_per_chunk"], "" if r["weights"] == "random" else " (trained)"
    cells = [
        f"{r['chunk']}{trained}", r["steps"], f"{r['guidance']} ({r['guidance_audio']:g}/{r['guidance_emotion']:g})",
        f"{ms['median']:.1f}", f"{ms['min']:.1f} – {ms['max']:.1f}", f"{r['frames_per_s']['median']:.0f}",
        f"{r['x_realtime']['median']:.1f}", f"{r['frontend_ms_per_chunk']:.1f}",
        f"{r['latency_floor_ms']:.0f} ms", f"{r['latency_ms']:.0f} ms",
    ]
    return "| " + " | ".join(map(str, cells)) + " |"


def stream_row(label: str, chunks: int, b: dict) -> str:
    c, n = b["cached_ms"], b["no_cache_ms"]
    return (f"| {label} | {chunks} | {c['median']:.1f} ({c['p95']:.1f}) | {n['median']:.1f} ({n['p95']:.1f}) "
            f"| {n['median'] / c['median']:.2f} |")


def markdown(result: dict) -> str:
    m, plan, s, fill = result["machine"], result["plan"], result["stream"], result["stream"]["cache_filling"]
    grid_note = (
        "`StreamingGenerator.step` with a full cache: Euler sampling (classifier-free guidance as one batched call) "
        f"plus the commit of the clean chunk. Median and range over {plan['repeats']} repeats of ~{plan['frames']} "
        f"frames each. Latency: the floor (L + K) x {FRAME_MS:g} ms, then floor + median generator + frontend "
        "compute per chunk."
    )
    stream_note = (
        f"The preset, one stream of {s['frames']} frames ({s['features']}). With the KV cache every chunk attends "
        f"to a fixed ring of W={s['context']} frames. Without it, the generator must recompute the keys/values of "
        "the last min(position, W) committed frames before every chunk: here in one batched commit pass over those "
        "chunks (the model attends to nothing older, so recomputing more history would only add waste). Both "
        "streams run interleaved on the same inputs and noise and give the same motion (max |difference| "
        f"{s['max_abs_motion_diff']:.1e})."
    )
    lines = [
        "# Motion generator benchmark", "",
        f"Command: `{result['command']}`  ", f"Date: {result['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, torch {m['torch']}  ",
        f"Weights: {result['weights']}  ",
        f"Preset: {preset(result['config'])}", "",
        target_line(result), "",
        "## Cost per chunk", "", grid_note, "",
        ("| L | steps | guidance (audio/emotion) | ms per chunk | range | frames/s | x real time | frontend ms "
         "| latency floor | floor + compute |"),
        "|---|---|---|---|---|---|---|---|---|---|",
        *map(grid_row, result["grid"]),
        "", f"## Cost over a stream of {duration(s['frames'])}", "", stream_note, "",
        "| stream position | chunks | with cache: median ms (p95) | no cache: median ms (p95) | no cache / cache |",
        "|---|---|---|---|---|",
        stream_row(f"cache filling (first {fill['frames']} frames)", fill["frames"] // s["chunk"], fill),
        *(stream_row(b["label"], b["chunks"], b) for b in s["bins"]),
        stream_row("whole stream", s["frames"] // s["chunk"], s["overall"]),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch intra-op threads (default 2: the project's CPU target; 1 to compare)")
    parser.add_argument("--repeats", type=int, help=f"timed repeats per grid cell (default {FULL.repeats}, "
                                                    f"--quick {QUICK.repeats})")
    parser.add_argument("--minutes", type=float, help=f"length of the stream (default {FULL.minutes:g}, "
                                                      f"--quick {QUICK.minutes * 60:g} s)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run in seconds: L in {QUICK.chunks}, N in {QUICK.steps}, a short stream")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="writes OUT.json and OUT.md (default benchmarks/results/generator_bench)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", type=Path,
                         help="a trained .safetensors motion checkpoint, timed for its own chunk size L")
    weights.add_argument("--tiny", action="store_true",
                         help="network sizes of MotionConfig.tiny() (for tests: the timings mean nothing)")
    args = parser.parse_args(argv)
    if args.threads < 1 or (args.repeats is not None and args.repeats < 1):
        parser.error("--threads and --repeats must be at least 1")
    if args.minutes is not None and not args.minutes > 0:
        parser.error(f"--minutes must be > 0 (the stream needs at least one chunk); got {args.minutes}")
    return args


def main(argv: list[str] | None = None) -> dict:
    return run_benchmark("generator_bench", SCRIPT, argv, parse_args, run, markdown)


if __name__ == "__main__":
    main()
