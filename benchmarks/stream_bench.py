"""Live-session speed on this machine (DESIGN.md §3, §11): latency, first frame, fps, CPU, sessions.

Everything runs in real time on the real clock and real threads, as a server runs it: a producer
thread (the "mic") pushes the sample speech, looped, in 20 ms packets at 48 kHz as a browser
microphone sends it, on an absolute schedule; an asyncio consumer pulls `Session.frames()`.
One renderer and one generator are shared by every session; each session has its worker thread.

  * per preset, one session for --seconds: engine latency p50/p95/p99 (a chunk's first sample
    arriving -> its first frame ready) against the preset's floor (L + K frames + the frontend's
    lookahead); viewer latency (arrival -> the frame released on its slot: adds headroom and
    jitter); sustained fps (frames released / wall time after the first STEADY_S), the longest gap
    between frames, frames late / dropped, and CPU use (process CPU time / wall time);
  * start-up, over --starts fresh sessions and the run above: first frame (`Session(...)` called
    -> the first frame released: the face appears) and first speech frame (the first packet pushed
    -> the first frame made from pushed audio is released);
  * concurrency: 1, 2, 3, ... sessions at once, --concurrency-seconds each, until one of them falls
    behind real time (fps < 24.5, more than 5 % of frames late, or any frame or audio dropped);
  * --long SECONDS instead of all that: one session per preset that long; latency, drift (release
    time - its slot t0 + pts / 25) and CPU per minute (10 bins under 2 minutes): all should be flat;
  * --viewers 1,4,8 instead of all that: an `avatar live` broadcast server in its own process and that
    many real aiortc viewers; the server's CPU per second of stream for each count (benchmarks/broadcast_cpu.py).

Targets on the 2-core CPU: engine latency p95 <= 250 ms balanced, <= 180 ms low-latency; first
speech frame <= 300 ms; >= 25 fps sustained (held real time, as above) for one session.
A warm-up session runs before each preset's measurements: the numbers are those of a running server.

    python benchmarks/stream_bench.py                     # every preset + balanced concurrency, ~6 min
    python benchmarks/stream_bench.py --preset quality --seconds 10 --max-sessions 0 --out /tmp/sb
    python benchmarks/stream_bench.py --long 3600 --preset balanced --out benchmarks/results/stream_bench_long
    python benchmarks/stream_bench.py --viewers 1,4,8 --preset balanced --baseline-root /tmp/before
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import itertools
import os
import platform
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from scipy.signal import resample_poly
from tqdm import tqdm

from benchmarks.common import cpu_name, fmt, percentiles, preset_step, progress, run_benchmark, stats, table
from benchmarks.generator_bench import stream_bins
from engine import assets
from engine.audio.io import load_audio
from engine.batch import PhaseGroups
from engine.face.analysis import analyze_portrait
from engine.face.rig import Rig
from engine.render.batching import BatchedRenderer
from engine.render.pool import RenderPool
from engine.render.renderer import Renderer
from engine.runtime import resolve_device, set_threads
from engine.stream import PRESETS, Preset, Session, SessionOptions
from engine.stream.presets import latency_floor_s
from engine.timebase import FPS, SAMPLE_RATE, checked_div

SCRIPT = "benchmarks/stream_bench.py"
DEFAULT_OUT = Path(__file__).parent / "results" / "stream_bench"
BROADCAST_OUT = Path(__file__).parent / "results" / "broadcast_cpu"
MIC_RATE = 48000  # what a browser microphone sends
PACKET_MS = 20
PACKET = checked_div(MIC_RATE * PACKET_MS, 1000)  # samples per packet at MIC_RATE
OPTIONS = SessionOptions(stats_window=10**7)  # keep every latency sample: > 100 hours of frames
WARMUP_S, START_S, STEADY_S = 2.0, 2.0, 2.0  # warm-up session, start-up trials, start-up left out of fps
MIN_FPS, MAX_LATE = FPS - 0.5, 0.05  # below / above these a session has fallen behind real time
ENGINE_P95_MS = {"balanced": 250.0, "low-latency": 180.0}
FIRST_SPEECH_FRAME_MS = 300.0
AUDIO_SOURCE = f"engine/assets/speech.wav looped, at {MIC_RATE} Hz in {PACKET_MS} ms packets on an absolute schedule"


class Mic(threading.Thread):
    """Pushes `audio` (at MIC_RATE, looped) to every session, packet k at start + k x PACKET_MS on the
    monotonic clock (late packets go at once: a browser's network burst), until stopped."""

    def __init__(self, sessions: list[Session], audio: np.ndarray):
        super().__init__(name="bench-mic", daemon=True)
        self.sessions, self.audio = sessions, audio
        self.first_push: float | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        start, packets = time.monotonic(), len(self.audio) // PACKET
        for k in itertools.count():
            if self._halt.wait(max(start + k * PACKET / MIC_RATE - time.monotonic(), 0.0)):
                return
            i = k % packets
            self.first_push = self.first_push or time.monotonic()
            for session in self.sessions:
                session.push_audio(self.audio[i * PACKET : (i + 1) * PACKET], MIC_RATE)

    def stop(self) -> None:
        self._halt.set()
        self.join()


@functools.lru_cache(maxsize=1)
def mic_audio() -> np.ndarray:
    """The sample speech at MIC_RATE, cut to whole packets."""
    audio = resample_poly(load_audio(assets.SAMPLE_SPEECH), checked_div(MIC_RATE, SAMPLE_RATE), 1)
    return audio[: len(audio) // PACKET * PACKET].astype(np.float32)


class Mark(NamedTuple):
    """A session's counters at one moment of a run."""

    wall: float  # time.monotonic()
    cpu: float  # time.process_time()
    latencies: int  # viewer latency samples so far
    readies: int  # engine latency samples so far
    backlog_s: float  # audio waiting in the input queue


@dataclasses.dataclass
class Trace:
    """What the consumer saw of one session."""

    pts: list[int] = dataclasses.field(default_factory=list)
    released: list[float] = dataclasses.field(default_factory=list)  # monotonic time each frame was yielded
    first_speech: float | None = None  # release of the first frame made from pushed audio
    marks: list[Mark] = dataclasses.field(default_factory=list)  # at the start and each bin's end
    t0: float = 0.0  # the slot of frame 0
    samples: dict = dataclasses.field(default_factory=dict)  # Session.latency_samples() at the end


def mark(session: Session) -> Mark:
    raw = session.latency_samples()
    return Mark(time.monotonic(), time.process_time(), len(raw["latency"]), len(raw["ready_latency"]),
                session.stats().backlog_s)


async def drive(sessions: list[Session], frames: int, mic: Mic, bin_ends: list[int], bar: tqdm) -> list[Trace]:
    """Pull `frames` frames of every session at once while `mic` pushes audio; what each consumer saw.
    At each frame count in `bin_ends` the first session's counters are marked (for per-bin figures)."""
    traces = [Trace() for _ in sessions]

    async def consume(session: Session, trace: Trace, ends: list[int]) -> None:
        trace.marks.append(mark(session))
        async with contextlib.aclosing(session.frames()) as stream:
            async for frame in stream:
                trace.pts.append(frame.pts)
                trace.released.append(time.monotonic())
                if trace.first_speech is None and session.latency_samples()["latency"]:
                    trace.first_speech = trace.released[-1]  # only a frame with an arrival has a latency
                if ends and frame.pts + 1 >= ends[0]:
                    trace.marks.append(mark(session))
                    ends = ends[1:]
                if trace is traces[0]:
                    bar.update()
                if frame.pts + 1 >= frames:
                    return

    tasks = [asyncio.ensure_future(consume(s, t, bin_ends if i == 0 else [])) for i, (s, t) in
             enumerate(zip(sessions, traces))]
    await asyncio.sleep(0)  # every consumer has pulled once: the sessions' schedules have started
    mic.start()
    try:
        await asyncio.gather(*tasks)
    finally:
        mic.stop()
    return traces


def summarize(session: Session, trace: Trace, mic: Mic, started: float) -> dict:
    """One session's figures (times in ms)."""
    st, released = session.stats(), np.asarray(trace.released)
    steady = released[released >= released[0] + STEADY_S]
    return {
        "engine_latency_ms": percentiles(trace.samples["ready_latency"]),
        "viewer_latency_ms": percentiles(trace.samples["latency"]),
        "compute_ms": percentiles(trace.samples["compute"]),
        "first_frame_ms": float(released[0] - started) * 1000,
        "first_speech_frame_ms": None if trace.first_speech is None else (trace.first_speech - mic.first_push) * 1000,
        "fps": float((len(steady) - 1) / (steady[-1] - steady[0])) if len(steady) > 1 else None,
        "max_gap_ms": float(np.diff(released).max() * 1000) if len(released) > 1 else None,
        "frames": st.frames_out, "frames_late": st.frames_late, "frames_dropped": st.frames_dropped,
        "audio_dropped_s": st.audio_dropped_s, "silence_inserted_s": st.silence_inserted_s,
    }


def keeps_up(s: dict) -> bool:
    """Whether a session held real time (the fps target and the concurrency criterion)."""
    return bool((s["fps"] or 0) >= MIN_FPS and s["frames_late"] <= MAX_LATE * s["frames"]
                and s["frames_dropped"] == 0 and s["audio_dropped_s"] == 0)


BACKEND = {"name": "auto", "device": "cpu"}  # --backend and --device of this run, set once by run()


def generator(preset: Preset, batching: bool = True):
    """The preset's chunk step on the run's backend (loaded once, shared by its sessions as a server shares
    it; batched, as a server runs it, unless `batching` says not)."""
    return preset_step(preset, BACKEND["name"], BACKEND["device"], batching=batching)


@functools.cache
def render_pool() -> RenderPool:
    """The run's render workers (started once: each imports torch and OpenCV)."""
    return RenderPool()


def measure(renderer: Renderer, preset: Preset, seconds: float, sessions: int = 1,
            bin_ends: list[int] | None = None, batching: bool = True) -> tuple[list[dict], list[Trace], dict]:
    """`sessions` sessions at once for `seconds` of video: a summary and a trace per session, and CPU use."""
    frames = round(seconds * FPS)
    started, cpu = time.monotonic(), time.process_time()
    step = generator(preset, batching)
    calls = getattr(step, "calls", 0), getattr(step, "streams", 0)
    batched = hasattr(step, "streams")  # the server batches the renderer's frames with the generator's calls
    # batched sessions make their chunks in phase groups and render in worker processes, as `avatar serve` runs them
    phases = PhaseGroups(1 if BACKEND["device"] != "cpu" else None) if batched else None
    pool = render_pool() if batched and renderer.image.device.type == "cpu" else None
    render = BatchedRenderer(renderer, pool=pool) if batched else renderer
    cpu += pool.cpu_seconds() if pool else 0.0  # the render workers' CPU counts too
    opened = [Session(render, step, preset, options=OPTIONS, phases=phases) for _ in range(sessions)]
    mic = Mic(opened, mic_audio())
    try:
        with tqdm(total=frames, desc=f"{preset.name} x{sessions}", unit="frame", leave=False, mininterval=1) as bar:
            traces = asyncio.run(drive(opened, frames, mic, bin_ends or [], bar))
        for s, t in zip(opened, traces):
            t.t0, t.samples = s.slot(0), s.latency_samples()
    finally:
        for s in opened:
            s.close()
    wall, cpu = time.monotonic() - started, time.process_time() - cpu + (pool.cpu_seconds() if pool else 0)
    use = {"core_pct": 100 * cpu / wall, "machine_pct": 100 * cpu / wall / os.cpu_count()}
    if batched:  # streams per backend call (encoder and chunk calls together), frames per renderer call
        calls = getattr(step, "calls", 0) - calls[0], getattr(step, "streams", 0) - calls[1]
        use["streams_per_call"] = calls[1] / calls[0] if calls[0] else None
        use["frames_per_render"] = render.frames_out / render.calls if render.calls else None
    return [summarize(s, t, mic, started) for s, t in zip(opened, traces)], traces, use


def bench_preset(renderer: Renderer, preset: Preset, args: argparse.Namespace) -> dict:
    """One session for --seconds after a warm-up, and --starts short ones for the start-up figures."""
    measure(renderer, preset, WARMUP_S)  # one-time set-up (first calls of every op) out of the way
    starts = [measure(renderer, preset, START_S)[0][0] for _ in range(args.starts)]
    (run,), _, cpu = measure(renderer, preset, args.seconds)
    first = {k: stats([s[k] for s in [*starts, run] if s[k] is not None])
             for k in ("first_frame_ms", "first_speech_frame_ms")}
    limits = {"first speech frame median, ms": (first["first_speech_frame_ms"]["median"], FIRST_SPEECH_FRAME_MS)}
    if preset.name in ENGINE_P95_MS:
        limits = {"engine latency p95, ms": (run["engine_latency_ms"]["p95"], ENGINE_P95_MS[preset.name]), **limits}
    targets = [{"target": k, "preset": preset.name, "value": v, "limit": lim, "met": v <= lim}
               for k, (v, lim) in limits.items()]
    targets.append({"target": f"fps >= {FPS} sustained (held real time)", "preset": preset.name, "value": run["fps"],
                    "limit": FPS, "met": keeps_up(run)})
    progress(f"{preset.name}: " + ", ".join(f"{t['target']} {fmt(t['value'], '.1f')}" for t in targets))
    cfg = generator(preset).config
    return {"preset": preset.name, "weights": preset.weights.name, "chunk": cfg.chunk, "lookahead": cfg.lookahead,
            "steps": preset.steps, "render_batch": preset.render_batch, "headroom_ms": preset.headroom_s * 1000,
            "jitter_ms": preset.jitter_s * 1000, "floor_ms": latency_floor_s(cfg.chunk, cfg.lookahead) * 1000,
            "seconds": args.seconds, "run": run, "cpu": cpu, "starts": len(starts) + 1, **first, "targets": targets}


def bench_concurrency(renderer: Renderer, preset: Preset, seconds: float, most: int, batching: bool) -> dict:
    """1, 2, ... sessions at once until one falls behind real time (or `most` held)."""
    measure(renderer, preset, WARMUP_S, batching=batching)
    rows = []
    for n in range(1, most + 1):
        runs, _, cpu = measure(renderer, preset, seconds, n, batching=batching)
        rows.append({"sessions": n, "held": all(map(keeps_up, runs)), "slowest_fps": min(r["fps"] or 0 for r in runs),
                     "most_late_pct": max(100 * r["frames_late"] / max(r["frames"], 1) for r in runs),
                     "frames_dropped": sum(r["frames_dropped"] for r in runs),
                     "audio_dropped_s": sum(r["audio_dropped_s"] for r in runs),
                     "worst_engine_p95_ms": max((r["engine_latency_ms"]["p95"] for r in runs if r["engine_latency_ms"]),
                                                default=None),
                     "cpu": cpu})
        progress(f"{preset.name}, batching {'on' if batching else 'off'}, {n} at once: slowest "
                 f"{rows[-1]['slowest_fps']:.2f} fps, {'held' if rows[-1]['held'] else 'fell behind'}")
        if not rows[-1]["held"]:
            break
    return {"preset": preset.name, "batching": batching, "seconds": seconds, "rows": rows,
            "held": max((r["sessions"] for r in rows if r["held"]), default=0), "ceiling_found": not rows[-1]["held"]}


def bench_long(renderer: Renderer, preset: Preset, seconds: float) -> dict:
    """One session for `seconds`: latency, drift and CPU per bin of the stream."""
    bins = stream_bins(round(seconds * FPS))
    measure(renderer, preset, WARMUP_S)
    (run,), (trace,), cpu = measure(renderer, preset, seconds, bin_ends=[b for _, b, _ in bins])
    pts, released = np.asarray(trace.pts), np.asarray(trace.released)
    drift = (released - trace.t0 - pts / FPS) * 1000  # ms after its slot each frame was released
    rows = []
    for (a, b, label), m0, m1 in zip(bins, trace.marks, trace.marks[1:]):
        inside = (pts >= a) & (pts < b)
        rows.append({"label": label,
                     "engine_latency_ms": percentiles(trace.samples["ready_latency"][m0.readies : m1.readies]),
                     "viewer_latency_ms": percentiles(trace.samples["latency"][m0.latencies : m1.latencies]),
                     "drift_ms": {"median": float(np.median(drift[inside])), "max": float(drift[inside].max())},
                     "cpu_core_pct": 100 * (m1.cpu - m0.cpu) / (m1.wall - m0.wall), "backlog_ms": 1000 * m1.backlog_s})
    slope = float(np.polyfit(released - released[0], drift, 1)[0] * 3600)  # least squares, ms of drift per hour
    progress(f"{preset.name}, {seconds:g} s: drift slope {slope:+.1f} ms per hour")
    return {"preset": preset.name, "seconds": seconds, "run": run, "cpu": cpu, "bins": rows,
            "drift_slope_ms_per_hour": slope}


# --- report ----------------------------------------------------------------------------------------


def run(args: argparse.Namespace, command: str) -> dict:
    resolve_device(args.device)  # no GPU fails now, with what to use instead
    BACKEND.update(name=args.backend, device=args.device)
    if args.viewers:
        return run_broadcast(args, command)
    ramps = [] if args.long or not args.max_sessions else args.concurrency
    for name in dict.fromkeys([*args.preset, *ramps]):
        generator(PRESETS[name])  # a missing checkpoint fails now, not minutes in
    renderer = Renderer(Rig(analyze_portrait(assets.DEFAULT_PORTRAIT, size=args.size))).eval().to(args.device)
    set_threads(args.threads)
    result = {
        "command": command, "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": args.threads,
                    "torch": torch.__version__, "python": platform.python_version(), "backend": args.backend,
                    "device": args.device, "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
                    "load_average_at_start": os.getloadavg()[0]},
        "renderer_px": args.size, "audio": AUDIO_SOURCE,
    }
    if args.long:
        result["long"] = [bench_long(renderer, PRESETS[name], args.long) for name in args.preset]
    else:
        result["presets"] = [bench_preset(renderer, PRESETS[name], args) for name in args.preset]
        result["concurrency"] = [bench_concurrency(renderer, PRESETS[name], args.concurrency_seconds,
                                                   args.max_sessions, batching == "on")
                                 for name in ramps for batching in args.batching]
    result["machine"]["torch_threads"] = torch.get_num_threads()  # as it stood after the runs
    return result


def run_broadcast(args: argparse.Namespace, command: str) -> dict:
    from benchmarks import broadcast_cpu

    generator(PRESETS[args.preset[0]])  # a missing checkpoint fails here, not in the server process
    engines = {"this checkout": Path(__file__).resolve().parents[1]}
    if args.baseline_root:
        engines = {"baseline": args.baseline_root.resolve(), **engines}
    result = {
        "command": command, "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": 1, "torch": torch.__version__,
                    "python": platform.python_version(), "backend": args.backend, "device": args.device,
                    "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
                    "load_average_at_start": os.getloadavg()[0]},
        "renderer_px": args.size, "audio": AUDIO_SOURCE,
    }
    servers = broadcast_cpu.measure(engines, args.viewers, args.viewer_seconds, args.repeats, args.size,
                                    args.preset[0], args.backend, args.device, progress)
    result["broadcast"] = {"preset": args.preset[0], "seconds": args.viewer_seconds, "repeats": args.repeats,
                           "engines": {k: str(v) for k, v in engines.items()}, "servers": servers}
    return result


def spread(d: dict | None, keys: tuple[str, ...] = ("p50", "p95", "p99")) -> str:
    return "–" if d is None else " / ".join(fmt(d[k]) for k in keys)


def cpu_cell(c: dict) -> str:
    return f"{c['core_pct']:.0f} % ({c['machine_pct']:.0f} %)"


def preset_section(presets: list[dict]) -> list[str]:
    runs = [[p["preset"], f"{p['chunk']}, {p['lookahead']}, {p['steps']}", fmt(p["floor_ms"]),
             spread(r["engine_latency_ms"]), spread(r["viewer_latency_ms"]), spread(r["compute_ms"], ("p50", "p95")),
             fmt(r["fps"], ".2f"), fmt(r["max_gap_ms"]), f"{r['frames_late']} / {r['frames_dropped']} of {r['frames']}",
             cpu_cell(p["cpu"])] for p in presets for r in [p["run"]]]
    starts = [[p["preset"], p["starts"], *(f"{fmt(p[k]['median'])} ({fmt(p[k]['min'])} – {fmt(p[k]['max'])})"
                                           for k in ("first_frame_ms", "first_speech_frame_ms"))] for p in presets]
    targets = [[t["target"], t["preset"], fmt(t["value"], ".1f"), f"{t['limit']:g}",
                f"**{'met' if t['met'] else 'missed'}**"] for p in presets for t in p["targets"]]
    return [
        f"## One session per preset ({presets[0]['seconds']:g} s)", "",
        "Engine latency: a chunk's first sample arriving -> its first frame ready (floor: L + K frames and the "
        "frontend's 24 ms lookahead). Viewer latency: a frame's first sample arriving -> the frame released on its "
        f"slot (adds the preset's headroom and jitter). fps: frames released / wall time after the first "
        f"{STEADY_S:g} s. Late: released > 10 ms after the slot. CPU: process CPU time / wall time, % of one core "
        "(% of the machine). Times in ms.", "",
        *table(["preset", "L, K, steps", "floor", "engine p50 / p95 / p99", "viewer p50 / p95 / p99",
                "compute p50 / p95", "fps", "longest gap", "late / dropped", "CPU"], runs), "",
        "## Start-up", "",
        "Median (range) over fresh sessions in a warm process. First frame: `Session(...)` called -> the first frame "
        "released. First speech frame: the first packet pushed -> the first frame made from pushed audio released.", "",
        *table(["preset", "sessions", "first frame ms", "first speech frame ms"], starts), "",
        "## Targets", "", *table(["target", "preset", "measured", "limit", ""], targets),
    ]


def concurrency_section(ramps: list[dict]) -> list[str]:
    def batching(c: dict) -> str:
        return "on" if c.get("batching", False) else "off"

    rows = [[c["preset"], batching(c), r["sessions"], f"{r['slowest_fps']:.2f}", f"{r['most_late_pct']:.1f} %",
             f"{r['frames_dropped']} / {r['audio_dropped_s']:.2f}", fmt(r["worst_engine_p95_ms"]), cpu_cell(r["cpu"]),
             fmt(r["cpu"].get("streams_per_call"), ".1f"), fmt(r["cpu"].get("frames_per_render"), ".1f"),
             "held" if r["held"] else "fell behind"]
            for c in ramps for r in c["rows"]]
    return [
        "## Concurrent sessions", "",
        f"Sessions at once (one renderer and generator shared, a worker thread each), {ramps[0]['seconds']:g} s a "
        f"step, until one falls behind real time (< {MIN_FPS:g} fps, > {MAX_LATE:.0%} of frames late, or anything "
        "dropped). Batching on: the sessions make their chunks in phase groups (engine.batch.PhaseGroups, one a "
        "core), so a group's generator calls share one backend call (streams a call: their mean) and its renderer "
        "calls one renderer call (frames a call), made on a CPU in the render workers (engine.render.pool, a "
        "process a core; CPU counts theirs); off: each session calls alone, its worker in the process's "
        "compute slots (engine.batch: a core each plus one, earliest deadline first).", "",
        *table(["preset", "batching", "sessions", "slowest fps", "most late", "dropped frames / audio s",
                "worst engine p95 ms", "CPU", "streams a call", "frames a render", "real time"], rows), "",
        *(f"{c['preset']}, batching {batching(c)}: **{c['held']}** session(s) held real time"
          + ("." if c["ceiling_found"] else " (the most tried; raise --max-sessions).") + "  " for c in ramps),
    ]


def long_section(g: dict) -> list[str]:
    r = g["run"]
    rows = [[b["label"], spread(b["engine_latency_ms"], ("p50", "p95")), spread(b["viewer_latency_ms"], ("p50", "p95")),
             spread(b["drift_ms"], ("median", "max")), fmt(b["cpu_core_pct"]), fmt(b["backlog_ms"])] for b in g["bins"]]
    return [
        f"## Long run: {g['preset']}, {g['seconds']:g} s", "",
        f"Drift: release time - slot (t0 + pts / {FPS}), slope {g['drift_slope_ms_per_hour']:+.1f} ms per hour. "
        f"Whole run: engine latency p50 / p95 / p99 {spread(r['engine_latency_ms'])} ms, {fmt(r['fps'], '.2f')} fps, "
        f"late / dropped {r['frames_late']} / {r['frames_dropped']} of {r['frames']}, CPU {cpu_cell(g['cpu'])}.", "",
        *table(["stream position", "engine p50 / p95 ms", "viewer p50 / p95 ms", "drift median / max ms",
                "CPU % of a core", "input backlog ms"], rows), "",
    ]


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Live session benchmark", "",
        f"Command: `{result['command']}`  ", f"Date: {result['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, torch {m['torch']}, "
        f"load average {m['load_average_at_start']:.2f} at start  ",
        f"Generator backend: {m.get('backend', 'torch')}. Renderer: {result['renderer_px']} px (torch, "
        f"{m.get('gpu') or m.get('device', 'cpu')}). "
        f"Audio: {result['audio']}.", "",
    ]
    if "long" in result:
        return "\n".join(lines + [line for g in result["long"] for line in long_section(g)])
    if "broadcast" in result:
        from benchmarks.broadcast_cpu import section

        return "\n".join(lines + section(result))
    lines += preset_section(result["presets"])
    lines += ["", *concurrency_section(result["concurrency"])] if result["concurrency"] else []
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", nargs="+", choices=PRESETS, default=list(PRESETS),
                        help="presets to measure (default: all)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each preset's run (default 30)")
    parser.add_argument("--starts", type=int, default=5,
                        help=f"extra fresh sessions ({START_S:g} s each) timing the start-up (default 5)")
    parser.add_argument("--concurrency", nargs="+", choices=PRESETS, default=["balanced"],
                        help="presets whose concurrent sessions are counted (default balanced)")
    parser.add_argument("--concurrency-seconds", type=float, default=15.0,
                        help="length of each concurrency step (default 15)")
    parser.add_argument("--max-sessions", type=int, default=8,
                        help="stop the concurrency ramp here even if it holds (default 8; 0 skips it)")
    parser.add_argument("--long", type=float, metavar="SECONDS",
                        help="instead of the above: one session per --preset this long, latency and drift per "
                             "minute (3600 for the hour-long no-drift check)")
    parser.add_argument("--viewers", type=lambda v: [int(n) for n in v.split(",")], metavar="N,N,...",
                        help="instead of the above: broadcast server CPU with this many viewers each (e.g. 1,4,8), "
                             "the first --preset; writes benchmarks/results/broadcast_cpu unless --out")
    parser.add_argument("--viewer-seconds", type=float, default=6.0,
                        help="--viewers: the CPU window of each count (default 6)")
    parser.add_argument("--repeats", type=int, default=3, help="--viewers: repeats of each count (default 3)")
    parser.add_argument("--baseline-root", type=Path,
                        help="--viewers: also measure a server importing engine/ from this folder (an earlier commit)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: real-time workers run one each, DESIGN.md §13)")
    parser.add_argument("--size", type=int, default=512, help="renderer resolution in px (default 512)")
    parser.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "tensorrt"), default="auto",
                        help="where the generator runs (default auto: ONNX Runtime on a CPU; the renderer is torch "
                        "either way)")
    parser.add_argument("--batching", nargs="+", choices=("on", "off"), default=["off", "on"],
                        help="concurrency ramps with sessions sharing each generator call (on, as the server runs "
                        "them) and each calling alone (off); default: both")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="torch's device for the renderer and a torch generator (default cpu)")
    parser.add_argument("--out", type=Path,
                        help="writes OUT.json and OUT.md (default benchmarks/results/stream_bench, or broadcast_cpu)")
    args = parser.parse_args(argv)
    args.out = args.out or (BROADCAST_OUT if args.viewers else DEFAULT_OUT)
    if args.viewers and (min(args.viewers) < 1 or args.repeats < 1 or args.viewer_seconds <= 0):
        parser.error("--viewers counts and --repeats must be at least 1, --viewer-seconds above 0")
    if args.threads < 1 or args.starts < 0 or args.max_sessions < 0:
        parser.error("--threads must be at least 1, --starts and --max-sessions at least 0")
    if min(args.seconds, args.concurrency_seconds) <= STEADY_S + 1:
        parser.error(f"--seconds and --concurrency-seconds must exceed {STEADY_S + 1:g}: fps is measured after "
                     f"the first {STEADY_S:g} s")
    if args.long is not None and args.long < 10:
        parser.error(f"--long must be at least 10 seconds (it reports 10 bins or more); got {args.long:g}")
    return args


def main(argv: list[str] | None = None) -> dict:
    return run_benchmark("stream_bench", SCRIPT, argv, parse_args, run, markdown)


if __name__ == "__main__":
    main()
