"""How many live sessions this machine sustains: the default of `--max-sessions`, measured at start.

A session's cost is measured the way its worker and its sender spend it: the chunk scheduler
(audio features, the generator's step, the renderer) over a few chunks of the bundled speech, and
the relay's VP8 encoder (engine.server.media) on the frames it made, in CPU time of this thread (torch runs one thread per
session worker), so other processes' load does not count. That is not all a session costs: the event
loop, RTP and SRTP, Opus, decoding the visitor's audio and uploads are left out, and the measured part
is only CORE_BUDGET of the whole. Calibration, on the 2-core CPU this was written on: the measured part
is 14.7 ms a frame at 512 px (0.37 of a core at 25 fps), while 4 visitors over WebRTC each got ~13.5 fps,
i.e. the two cores carried 2.2 sessions' worth (0.93 of a core each): 0.37 / 0.93 = 0.4.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np

from engine.timebase import FPS

CORE_BUDGET = 0.4  # the measured part's share of a whole session's cost (calibrated above)
# A broadcast viewer costs no encode (the relay encodes once for all: engine.server.media), only its RTP, SRTP
# and RTCP: 8 viewers cost the server 70 % of a core against 1 viewer's 66 % (benchmarks/results/broadcast_cpu.md),
# ~0.006 of a core each; rounded up.
VIEWER_LOAD = 0.01
MEASURED_CHUNKS = 3  # after one chunk of warm-up


@dataclass(frozen=True)
class Capacity:
    sessions: int  # what --max-sessions defaults to (converse: sessions; broadcast: viewers)
    load: float  # of a core, one session (or viewer) at FPS, as measured
    cores: int

    def describe(self) -> str:
        return (f"{self.sessions} (measured: each needs {self.load:.2f} of a core at {FPS} fps here, "
                f"{self.cores} cores x {CORE_BUDGET})")


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def measure(renderer, model, preset, viewers: bool = False) -> Capacity:
    """Time a session's frames (scheduler and VP8) on this machine and derive how many sessions fit; with
    `viewers`, how many viewers of one such session fit (VIEWER_LOAD each)."""
    from engine import assets
    from engine.audio.io import load_audio
    from engine.server.media import VideoEncoder
    from engine.stream.drivers import Controls, motion_stream
    from engine.stream.scheduler import ChunkScheduler

    motion = motion_stream(model, Controls(), preset.steps, preset.baseline_chunk)
    scheduler = ChunkScheduler(motion, renderer, preset.render_batch)
    speech = load_audio(assets.SAMPLE_SPEECH)
    encoder, fed, frames, compute_s, encode_s = VideoEncoder(), 0, 0, 0.0, 0.0
    for chunk_index in range(1 + MEASURED_CHUNKS):  # the first chunk warms up
        started = time.thread_time()  # CPU time: other processes' load does not count against us
        while (need := scheduler.samples_needed()) > 0:
            piece = speech[fed % len(speech):][:need]
            scheduler.feed(np.ascontiguousarray(piece, np.float32), None)
            fed += len(piece)
        images = [frame.image for batch in scheduler.render(scheduler.step()) for frame in batch]
        rendered = time.thread_time()
        for image in images:
            encoder.encode(image, encoder.frames_encoded)
        if chunk_index > 0:
            compute_s, encode_s = compute_s + rendered - started, encode_s + time.thread_time() - rendered
            frames += len(images)
    compute, encode = compute_s / frames * FPS, encode_s / frames * FPS  # cores at FPS
    cores = available_cores()
    if viewers:
        return Capacity(max(1, math.floor((cores * CORE_BUDGET - compute - encode) / VIEWER_LOAD)), VIEWER_LOAD, cores)
    return Capacity(max(1, math.floor(cores * CORE_BUDGET / (compute + encode))), compute + encode, cores)
