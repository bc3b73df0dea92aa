"""Latency presets: what `--preset low-latency|balanced|quality` changes in a live session.

A chunk of L frames is generated from its audio plus K lookahead frames, and the audio frontend
needs LOOKAHEAD_SAMPLES (24 ms) beyond that, so a chunk's first sample waits at least
(L + K) x 40 ms + 24 ms for the last sample it depends on: the latency floor. On top of it the
session keeps `headroom_s` to compute a chunk before its first frame is due, and puts `jitter_s` of
silence ahead of a talk spurt so late packets do not open gaps in it. Audio arriving in real time
is shown floor + headroom + jitter (+ up to one packet) after it arrived.

The learned driver's L and K are fixed by the network it loads (MotionConfig.chunk/.lookahead:
the weights were trained for that window), so each preset names its weights: the low-latency and
balanced presets run `motion_fast.safetensors` (L=2, K=1: the shipped generator fine-tuned to the
shorter window), the quality preset `motion.safetensors` (L=4, K=2). The baseline driver has no
lookahead and takes any L, so for it the presets set L.

| preset      | learned weights (L, K) | steps N | render batch | headroom | jitter | baseline L | floor (learned) |
|-------------|------------------------|---------|--------------|----------|--------|------------|-----------------|
| low-latency | motion_fast (2, 1)     | 2       | 1            | 40 ms    | 20 ms  | 1          | 144 ms          |
| balanced    | motion_fast (2, 1)     | 4       | 2            | 60 ms    | 40 ms  | 2          | 144 ms          |
| quality     | motion (4, 2)          | 8       | 4            | 120 ms   | 60 ms  | 4          | 264 ms          |

Engine latency (a chunk's first sample arriving -> its first frame ready) is the floor plus a
chunk's compute; what a viewer sees adds headroom and jitter. benchmarks/stream_bench.py measures
both per preset (benchmarks/results/stream_bench.md). Headroom must exceed a chunk's compute plus
its jitter; when it does not, frames are released late (the schedule holds) and
`SessionStats.frames_late` counts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine import assets
from engine.audio.frontend import LOOKAHEAD_SAMPLES
from engine.errors import UserError
from engine.timebase import SAMPLE_RATE, SAMPLES_PER_FRAME


@dataclass(frozen=True)
class Preset:
    name: str
    steps: int  # learned driver: Euler steps per chunk (more = smoother motion, more compute)
    render_batch: int  # frames per renderer call (capped at L): 1 gets a chunk's first frame out soonest
    headroom_s: float  # a chunk's audio is awaited until this long before its first frame is due
    jitter_s: float  # silence put ahead of audio that resumes after a gap, so its next packets have slack
    baseline_chunk: int  # L for the baseline driver (which reads no lookahead: K = 0)
    weights: Path = assets.DEFAULT_MOTION  # the learned driver's generator (its L and K come with it)

    def __post_init__(self):
        if not isinstance(self.steps, int) or self.steps < 1:
            raise UserError(f"preset {self.name}: steps must be a positive integer, got {self.steps!r}")
        if not isinstance(self.render_batch, int) or self.render_batch < 1:
            raise UserError(f"preset {self.name}: render_batch must be a positive integer, got {self.render_batch!r}")
        if not isinstance(self.baseline_chunk, int) or self.baseline_chunk < 1:
            raise UserError(f"preset {self.name}: baseline_chunk must be a positive integer, "
                            f"got {self.baseline_chunk!r}")
        if self.headroom_s < 0 or self.jitter_s < 0:
            raise UserError(f"preset {self.name}: headroom_s and jitter_s must be >= 0, "
                            f"got {self.headroom_s} and {self.jitter_s}")


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("low-latency", steps=2, render_batch=1, headroom_s=0.04, jitter_s=0.02, baseline_chunk=1,
               weights=assets.FAST_MOTION),
        Preset("balanced", steps=4, render_batch=2, headroom_s=0.06, jitter_s=0.04, baseline_chunk=2,
               weights=assets.FAST_MOTION),
        Preset("quality", steps=8, render_batch=4, headroom_s=0.12, jitter_s=0.06, baseline_chunk=4,
               weights=assets.DEFAULT_MOTION),
    )
}


def get_preset(preset: str | Preset) -> Preset:
    """A preset by name (or a custom Preset passed through)."""
    if isinstance(preset, Preset):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise UserError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}") from None


def latency_floor_s(chunk: int, lookahead: int) -> float:
    """Seconds a chunk's first audio sample waits for the last sample its chunk depends on."""
    return ((chunk + lookahead) * SAMPLES_PER_FRAME + LOOKAHEAD_SAMPLES) / SAMPLE_RATE
