"""Process-wide settings for real-time work, applied once at start-up by the CLI and benchmarks."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import cv2
import torch

from engine.errors import UserError

DEVICES = ("cpu", "cuda")

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def tune_allocator() -> bool:
    """Keep freed memory in the process instead of returning it to the OS (glibc only).

    Every frame allocates the same few multi-megabyte tensors; by default glibc serves them
    with mmap and unmaps them on free, so each frame page-faults them in again. Raising the
    mmap and trim thresholds keeps them in the heap: measured 512 px renderer, 1 thread,
    batch 4: median 128 -> 151 frames/s. Returns whether the setting was applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):  # musl has no mallopt
        return False
    # 32 MiB is glibc's ceiling for the mmap threshold on 64-bit, above any per-frame tensor here.
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20))


def set_threads(threads: int) -> None:
    """Intra-op threads for torch and OpenCV alike (the renderer's CPU path runs on both)."""
    torch.set_num_threads(max(1, threads))
    cv2.setNumThreads(max(1, threads))


def resolve_device(name: str) -> torch.device:
    """`--device`: cpu, or cuda (the GPU torch sees first). A UserError says why cuda cannot be used."""
    if name not in DEVICES:
        raise UserError(f"--device must be one of {', '.join(DEVICES)}; got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise UserError(f"--device cuda: torch {torch.__version__} ({build}) sees no CUDA GPU here; "
                        "use --device cpu, or install a CUDA build of torch on a machine with an NVIDIA GPU")
    return torch.device(name)
