"""benchmarks/session_cpu.py: the stage clock times what it wraps and leaves nothing wrapped; the report
has a row per stage and thread kind."""

import time

from benchmarks import session_cpu
from engine.audio.frontend import AudioFrontend


def test_stage_clock_times_the_stages_and_unwraps_them():
    original = AudioFrontend.push
    with session_cpu.StageClock() as clock:
        assert AudioFrontend.push is not original
        AudioFrontend().push(__import__("numpy").zeros(16000, "float32"))
    assert AudioFrontend.push is original
    assert clock.calls["audio frontend"] == 1 and clock.calls["  VAD"] == 1
    assert 0 < clock.seconds["  VAD"] <= clock.seconds["audio frontend"] < 10


def test_markdown_has_every_stage_and_thread_kind():
    count = {"sessions": 2, "cpu": {"core_pct": 75.0}, "slowest_fps": 25.0, "most_late_pct": 0.0, "chunks": 10,
             "stages": {"chunk (all below)": {"ms_per_chunk": 28.0, "core_pct_per_session": 35.0}},
             "threads": {"avatar-session": {"core_pct": 70.0, "kernel_pct": 2.0, "switches_per_s": 300.0}}}
    md = session_cpu.markdown({"command": "python benchmarks/session_cpu.py", "date": time.strftime("%F"),
                               "machine": {"cpu": "x", "cores": 2, "load_average_at_start": 0.5}, "slots": None,
                               "seconds": 15.0, "batching": True, "counts": [count]})
    assert "batching on (phase groups)" in md and "| chunk (all below) | 28.00 / 35.0 |" in md and "| avatar-session | 70.0 / 2.0 / 300 |" in md
    assert md.count("&nbsp;&nbsp;&nbsp;&nbsp;speech encoder") == 1
