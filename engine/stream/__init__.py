"""Live streaming: a Session turns pushed audio into paced, pts-stamped video frames (DESIGN.md §3).

session.py (threads, queues, pacing, drop policy), scheduler.py (the per-stream compute: timeline
samples -> features -> motion -> frames), drivers.py (learned and baseline drivers as streams),
presets.py (low-latency / balanced / quality), resample.py (stateful resampling of live input),
clock.py (monotonic and simulated clocks).
"""

from engine.frames import LiveFrame
from engine.stream.clock import MonotonicClock, SimulatedClock
from engine.stream.drivers import Controls
from engine.stream.presets import PRESETS, Preset, get_preset
from engine.stream.resample import StreamResampler
from engine.stream.session import Session, SessionError, SessionOptions, SessionStats

__all__ = ["PRESETS", "Controls", "LiveFrame", "MonotonicClock", "Preset", "Session", "SessionError",
           "SessionOptions", "SessionStats", "SimulatedClock", "StreamResampler", "get_preset"]
