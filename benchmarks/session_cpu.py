"""Where a live session's CPU goes (issue 14's capacity work): N sessions at once as stream_bench runs them.

For each count in --sessions, the sessions run --seconds (after a warm-up) exactly as in stream_bench's
concurrency ramp, and this reports:
  * per stage, the CPU time of the threads that ran it (time.thread_time around the stage's function;
    inclusive, so "chunk" contains "encode" and "generator step"), per chunk and as % of one core per
    session: the audio frontend (VAD, log-mel, prosody), the speech encoder, the generator's chunk step,
    the renderer (its torch layers: the detail warp and the mouth and lids composited), the whole chunk;
  * per thread kind, CPU and kernel time (% of one core) and context switches a second, from /proc;
  * fps and late frames of the slowest session, as stream_bench counts them.
--slots N runs the sessions' workers in N compute slots (engine.batch.ComputeSlots) instead of the
process's default (a core each plus one); a large N means no limit, as before the slots. --batching on
runs them batched, as stream_bench's ramp does with batching on (phase groups, one generator and
renderer call for a group's chunks); a batched call's CPU counts once, in the thread that ran it. The
render workers' CPU (engine.render.pool, batching on) is in the process total, not in the stages: there
the renderer stage is only its hand-off to a worker.

    python benchmarks/session_cpu.py --sessions 1 5 --out benchmarks/results/session_cpu
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import stream_bench
from benchmarks.common import cpu_name, fmt, progress, run_benchmark, table
from engine import assets
from engine.face.analysis import analyze_portrait
from engine.face.rig import Rig
from engine.render.renderer import Renderer
from engine.runtime import set_threads
from engine.stream import PRESETS

SCRIPT = "benchmarks/session_cpu.py"
DEFAULT_OUT = Path(__file__).parent / "results" / "session_cpu"


def stages() -> list[tuple[object, str, str]]:
    """(owner, attribute, stage) of the functions timed, outermost first."""
    from engine.audio.frontend import AudioFrontend
    from engine.audio.mel import StreamingLogMel
    from engine.audio.prosody import StreamingProsody
    from engine.audio.vad import StreamingVAD
    from engine.backends.onnxruntime import OrtStep
    from engine.motion.generator import StreamingGenerator
    from engine.render import renderer
    from engine.render.eyes import Eyelid
    from engine.render.mouth import MouthInterior
    from engine.stream.scheduler import ChunkScheduler
    from engine.stream.session import Session

    return [(Session, "_compute", "chunk (all below)"), (AudioFrontend, "push", "audio frontend"),
            (StreamingVAD, "push", "  VAD"), (StreamingLogMel, "push", "  log-mel"),
            (StreamingProsody, "push", "  prosody"), (ChunkScheduler, "step", "motion (generator, blinks, controls)"),
            (StreamingGenerator, "step", "  generator step"), (OrtStep, "encode", "    speech encoder"),
            (OrtStep, "__call__", "    chunk graph"), (renderer.Renderer, "frames", "renderer"),
            (renderer.Renderer, "_detail", "  detail warp (torch)"), (renderer, "_composite", "  mouth and lids"),
            (MouthInterior, "window", "  mouth window test"), (Eyelid, "visible", "  lid visibility test")]


class StageClock:
    """Thread CPU time spent in each stage while installed (wraps the stages' functions)."""

    def __init__(self):
        self.seconds, self.calls = collections.Counter(), collections.Counter()
        self._originals = []

    def __enter__(self) -> StageClock:
        for owner, name, stage in stages():
            original = getattr(owner, name)
            self._originals.append((owner, name, original))
            setattr(owner, name, self._timed(original, stage))
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, original in reversed(self._originals):
            setattr(owner, name, original)

    def _timed(self, function, stage: str):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            start = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[stage] += time.thread_time() - start
                self.calls[stage] += 1
        return timed


def thread_times() -> dict[int, tuple[str, float, float, int]]:
    """Per thread of this process: (name, CPU s, of which kernel s, context switches) from /proc."""
    names = {t.native_id: t.name.split("-")[0] if t.name.startswith("Thread") else t.name
             for t in threading.enumerate()}
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
            status = Path(f"/proc/self/task/{tid}/status").read_text()
        except FileNotFoundError:  # ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        switches = sum(int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line)
        name = names.get(int(tid), "other (ONNX Runtime, torch, OpenCV)")
        out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / tick, int(fields[12]) / tick, switches)
    return out


def measure_count(renderer: Renderer, sessions: int, seconds: float, batching: bool = False) -> dict:
    """`sessions` at once for `seconds`: stage and thread CPU over the steady middle of the run."""
    preset = PRESETS["balanced"]
    window: dict = {}

    def sample() -> None:  # the middle of the run: start-up and wind-down left out
        time.sleep(2.0)
        first, start = thread_times(), time.monotonic()
        time.sleep(seconds - 4.0)
        window.update(first=first, last=thread_times(), wall=time.monotonic() - start)

    sampler = threading.Thread(target=sample, daemon=True)
    with StageClock() as clock:
        sampler.start()
        runs, _, cpu = stream_bench.measure(renderer, preset, seconds, sessions, batching=batching)
        sampler.join()
    chunks = clock.calls["chunk (all below)"]
    wall = seconds + 1e-9
    stage_rows = {stage: {"ms_per_chunk": 1000 * s / max(chunks, 1), "core_pct_per_session": 100 * s / wall / sessions}
                  for stage, s in clock.seconds.items()}
    kinds = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for tid, (name, total, kernel, switches) in window["last"].items():
        before = window["first"].get(tid, (name, 0.0, 0.0, 0))
        kinds[name][0] += total - before[1]
        kinds[name][1] += kernel - before[2]
        kinds[name][2] += switches - before[3]
    threads = {name: {"core_pct": 100 * t / window["wall"], "kernel_pct": 100 * k / window["wall"],
                      "switches_per_s": s / window["wall"]} for name, (t, k, s) in kinds.items() if t or s}
    slowest = min(runs, key=lambda r: r["fps"] or 0)
    progress(f"{sessions} session(s): {cpu['core_pct']:.0f} % of a core, slowest {slowest['fps']:.2f} fps")
    return {"sessions": sessions, "cpu": cpu, "stages": stage_rows, "threads": threads, "chunks": chunks,
            "slowest_fps": slowest["fps"], "most_late_pct": max(100 * r["frames_late"] / max(r["frames"], 1)
                                                               for r in runs)}


def run(args: argparse.Namespace, command: str) -> dict:
    if args.slots:
        from engine.batch import ComputeSlots
        from engine.stream import session

        slots = ComputeSlots(args.slots)
        session.cpu_slots = lambda: slots  # every Session made below takes these
    stream_bench.BACKEND.update(name="onnxruntime", device="cpu")
    stream_bench.generator(PRESETS["balanced"])
    renderer = Renderer(Rig(analyze_portrait(assets.DEFAULT_PORTRAIT, size=512))).eval()
    set_threads(1)
    batching = args.batching == "on"
    stream_bench.measure(renderer, PRESETS["balanced"], stream_bench.WARMUP_S, batching=batching)
    return {"command": command, "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]},
            "slots": args.slots, "seconds": args.seconds, "batching": batching,
            "counts": [measure_count(renderer, n, args.seconds, batching) for n in args.sessions]}


def markdown(result: dict) -> str:
    counts, m = result["counts"], result["machine"]
    stage_names = [stage for _, _, stage in stages()]
    stage_rows = [["&nbsp;" * (len(stage) - len(stage.lstrip())) + stage.lstrip(),
                   *(f"{fmt(c['stages'].get(stage, {}).get('ms_per_chunk'), '.2f')} / "
                     f"{fmt(c['stages'].get(stage, {}).get('core_pct_per_session'), '.1f')}" for c in counts)]
                  for stage in stage_names]
    kinds = sorted({k for c in counts for k in c["threads"]})
    thread_rows = [[k, *(f"{fmt(c['threads'].get(k, {}).get('core_pct'), '.1f')} / "
                         f"{fmt(c['threads'].get(k, {}).get('kernel_pct'), '.1f')} / "
                         f"{fmt(c['threads'].get(k, {}).get('switches_per_s'))}" for c in counts)] for k in kinds]
    header = [f"{c['sessions']} session(s)" for c in counts]
    return "\n".join([
        "# Where a live session's CPU goes", "",
        f"Command: `{result['command']}`  ", f"Date: {result['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, load average {m['load_average_at_start']:.2f} at start. "
        f"Balanced preset, onnxruntime generator, 512 px renderer, {result['seconds']:g} s a count, compute slots: "
        f"{result['slots'] or 'the default (a core each plus one)'}, batching "
        f"{'on (phase groups)' if result.get('batching') else 'off'}.", "",
        "## Stages", "",
        "Thread CPU time in each stage (inclusive: indented stages are inside the one above), ms per chunk of "
        "2 frames / % of one core per session.", "",
        *table(["stage", *header], stage_rows), "",
        "## Threads", "",
        "% of one core / of which in the kernel / context switches a second, over the run's steady middle.", "",
        *table(["threads", *header], thread_rows), "",
        "## Result", "",
        *table(["sessions", "process CPU, % of a core", "slowest fps", "most late"],
               [[c["sessions"], fmt(c["cpu"]["core_pct"]), fmt(c["slowest_fps"], ".2f"), f"{c['most_late_pct']:.1f} %"]
                for c in counts]), "",
    ])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 5], help="session counts (default 1 5)")
    parser.add_argument("--seconds", type=float, default=15.0, help="each count's run (default 15, at least 8)")
    parser.add_argument("--slots", type=int, help="compute slots (default: a core each plus one; 99: no limit)")
    parser.add_argument("--batching", choices=("on", "off"), default="off",
                        help="sessions batched in phase groups, or each calling alone (default off)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    if args.seconds < 8 or min(args.sessions) < 1 or (args.slots is not None and args.slots < 1):
        parser.error("--seconds must be at least 8, --sessions and --slots at least 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    return run_benchmark("session_cpu", SCRIPT, argv, parse_args, run, markdown)


if __name__ == "__main__":
    main()
