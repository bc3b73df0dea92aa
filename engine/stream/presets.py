"""Latency presets: what `--preset low-latency|balanced|quality` changes in a live session.

A chunk of L frames is generated from its audio plus K lookahead frames, and the audio frontend
needs LOOKAHEAD_SAMPLES (24 ms) beyond that, so a chunk's first sample waits at least
(L + K) x 40 ms + 24 ms for the last sample it depends on: the latency floor. On top of it the
session keeps `headroom_s` to compute a chunk before its first frame is due, and puts `jitter_s` of
silence ahead of a talk spurt so late packets do not open gaps in it. Audio arriving in real time
is shown floor + headroom + jitter (+ up to one packet) after it arrived.

The learned driver's L and K are fixed by the network it loads (MotionConfig.chunk/.lookahead:
the weights were trained for that window), so with one set of weights the presets can only trade
the rest: Euler steps N, renderer batch, headroom and jitter slack. A preset with another L/K needs
its own trained checkpoint. The baseline driver has no lookahead and takes any L, so for it the
presets do set L.

| preset      | learned L, K   | steps N | render batch | headroom | jitter | baseline L, K | latency, shipped L=4 K=2 |
|-------------|----------------|---------|--------------|----------|--------|---------------|--------------------------|
| low-latency | from the model | 2       | 1            | 60 ms    | 20 ms  | 1, 0          | 264 + 80 ms = 344 ms     |
| balanced    | from the model | 4       | 2            | 120 ms   | 40 ms  | 2, 0          | 264 + 160 ms = 424 ms    |
| quality     | from the model | 8       | 4            | 200 ms   | 60 ms  | 4, 0          | 264 + 260 ms = 524 ms    |

Measured (shipped model, 512 px renderer, one torch thread, the sample speech pushed in real time as
20 ms packets at 48 kHz, this 2-core machine while a training run used it): latency p50 346 / 439 /
539 ms; compute per chunk p50 33 / 52 / 83 ms; late frames 3 / 0 / 0 of 250. Headroom must exceed a
chunk's compute plus its jitter; when it does not, frames are released late (the schedule holds) and
`SessionStats.frames_late` counts them.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        Preset("low-latency", steps=2, render_batch=1, headroom_s=0.06, jitter_s=0.02, baseline_chunk=1),
        Preset("balanced", steps=4, render_batch=2, headroom_s=0.12, jitter_s=0.04, baseline_chunk=2),
        Preset("quality", steps=8, render_batch=4, headroom_s=0.20, jitter_s=0.06, baseline_chunk=4),
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
