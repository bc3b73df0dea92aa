"""What every benchmark reports the same way: summary statistics and the machine."""

from __future__ import annotations

import platform
import statistics
from pathlib import Path


def stats(values: list[float]) -> dict:
    """Median and range: these machines are noisy, so a mean alone would mislead."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()
