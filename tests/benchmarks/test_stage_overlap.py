"""benchmarks/stage_overlap.py: two functions are timed while both run, and the report shows every pair."""

import time

from benchmarks import stage_overlap


def test_side_by_side_times_both_while_both_run():
    slow, quick = (lambda: time.sleep(0.02)), (lambda: time.sleep(0.005))
    a, b = stage_overlap.side_by_side(slow, quick, seconds=0.2)
    assert 15 < a < 40 and 3 < b < 15  # sleeps hold no core: neither slows the other


def test_report_has_every_stage_and_pair():
    result = {"command": "python benchmarks/stage_overlap.py", "date": "2026-12-06", "seconds": 3.0,
              "machine": {"cpu": "x", "cores": 2, "load_average_at_start": 0.1, "torch": "2"},
              "alone_ms": {"renderer, 6 frames": 26.0},
              "pairs": [{"a": "renderer, 6 frames", "b": "renderer, 6 frames", "a_ms": 39.7, "b_ms": 39.5,
                         "throughput": 1.32}]}
    md = stage_overlap.markdown(result)
    assert "| renderer, 6 frames | 26.0 |" in md and "| renderer, 6 frames | renderer, 6 frames | 39.7 | 39.5 | 1.32 |" in md
