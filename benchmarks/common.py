"""What every benchmark reports the same way: summary statistics and the machine."""

from __future__ import annotations

import functools
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


def run_benchmark(name: str, script: str, argv, parse_args, run, markdown, prog: str | None = None) -> dict:
    """A benchmark's command line: parse, run, write <out>.json and <out>.md, print the Markdown.
    The result records the command (`prog`, default `python <script>`, and the arguments). A UserError
    (a missing checkpoint, a bad option) ends it with its message, as `avatar` does."""
    import json
    import shlex
    import sys

    from engine.errors import UserError
    from engine.runtime import tune_allocator

    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    tune_allocator()  # as the `avatar` command does
    try:
        result = run(args, command=f"{prog or 'python ' + script} {shlex.join(argv)}".strip())
    except UserError as err:
        sys.exit(f"{name}: {err}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return result


def percentiles(seconds: list[float]) -> dict | None:
    """p50/p95/p99/max in milliseconds of durations given in seconds (None for none)."""
    import numpy as np

    if not seconds:
        return None
    ms = np.asarray(seconds) * 1000
    return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "p99": float(np.percentile(ms, 99)), "max": float(ms.max())}


def progress(line: str) -> None:
    """A progress line on stderr that does not break a running tqdm bar."""
    import sys

    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "–" if value is None else format(value, spec)


def table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table."""
    return [f"| {' | '.join(header)} |", "|---" * len(header) + "|", *(f"| {' | '.join(map(str, r))} |" for r in rows)]


@functools.cache
def _registry(backend: str, device: str, threads: int, batching: bool):
    from engine.backends.registry import StepRegistry
    from export.runtime import prepare

    return StepRegistry(backend, device, threads, prepare, batching)


def preset_step(preset, backend: str = "auto", device: str = "cpu", threads: int = 1, batching: bool = False):
    """A preset's chunk step on a backend, loaded once per process and shared by the sessions that use it
    (as the server shares it); `batching` hands out the batched step the server runs (engine.backends.batching)."""
    return _registry(backend, device, threads, batching).get(preset.weights, preset.steps)
