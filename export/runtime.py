"""Backends for the generator: `--backend torch` (the module itself) or `--backend onnxruntime`
(the exported chunk graph: one ONNX Runtime call per chunk, its Euler steps unrolled inside).

The renderer stays on torch for every CPU backend: ONNX Runtime's CPU GridSample makes the 512 px
renderer 2.5x slower than torch here, while the generator runs 3.4x faster on ONNX Runtime
(benchmarks/results/backend_bench.md).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from engine.errors import UserError
from engine.io import sha256_file
from engine.motion.cache import KVCache
from engine.motion.generator import StreamingGenerator
from engine.motion.model import Conditions, MotionConfig
from engine.motion.sampler import SamplerOptions

BACKENDS = ("torch", "onnxruntime")
CACHE_DIR = Path(os.environ.get("AVATAR_CACHE", Path.home() / ".cache" / "avatar-engine")) / "onnx"


class OrtModel:
    """A generator exported by `avatar export onnx`, run by ONNX Runtime; stands in for the torch
    MotionTransformer wherever a driver takes one (it has `.config` and makes stream generators)."""

    def __init__(self, onnx_dir: str | Path, threads: int = 1):
        from export.onnx import ort_session

        onnx_dir = Path(onnx_dir)
        manifest_path = onnx_dir / "manifest.json"
        if not manifest_path.is_file() or "chunk" not in json.loads(manifest_path.read_text())["graphs"]:
            raise UserError(f"{onnx_dir} holds no exported generator; make one with "
                            f"`avatar export onnx --checkpoint C --out {onnx_dir}`")
        manifest = json.loads(manifest_path.read_text())
        self.dir, self.manifest = onnx_dir, manifest
        self.config = MotionConfig.from_dict(manifest["config"])
        self.sampler = SamplerOptions(**manifest["sampler"])
        self.session = ort_session(onnx_dir / manifest["graphs"]["chunk"]["file"], threads)

    def streaming(self, options: SamplerOptions, seed: int = 0) -> OrtStreamingGenerator:
        return OrtStreamingGenerator(self, options, seed)


class OrtStreamingGenerator(StreamingGenerator):
    """StreamingGenerator whose per-chunk tensor work is the exported chunk graph; features, audio
    history, statistics, noise and clipping are the torch generator's own code."""

    def __init__(self, model: OrtModel, options: SamplerOptions, seed: int = 0):
        self.ort, self.config, self.device, self.seed = model, model.config, torch.device("cpu"), seed
        self.options = options
        self.reset()

    @property
    def options(self) -> SamplerOptions:
        return self._options

    @options.setter
    def options(self, options: SamplerOptions) -> None:
        if options != self.ort.sampler:
            raise UserError(f"the ONNX generator in {self.ort.dir} was exported for {self.ort.sampler}; "
                            f"{options} needs its own export (avatar export onnx --steps --guidance-audio ...)")
        self._options = options

    def _advance(self, cond: Conditions, noise: torch.Tensor) -> torch.Tensor:
        feed = {"mel": cond.mel, "prosody": cond.prosody, "stats": cond.stats, "emotion": cond.emotion,
                "ref": cond.ref, "noise": noise, **self.cache._asdict()}
        clean, *cache = self.ort.session.run(None, {name: value.numpy() for name, value in feed.items()})
        self.cache = KVCache(*(torch.from_numpy(c) for c in cache))
        return torch.from_numpy(clean)


def load_motion_model(backend: str, checkpoint: str | Path | None, options: SamplerOptions, threads: int = 1):
    """The generator for a backend: torch weights, or their ONNX export (made once and cached under
    CACHE_DIR, keyed by the weights' hash and the sampler options)."""
    from engine import assets
    from engine.motion.learned import load_generator

    if backend == "torch":
        return load_generator(checkpoint)
    if backend != "onnxruntime":
        raise UserError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    checkpoint = Path(checkpoint or assets.DEFAULT_MOTION)
    load_generator(checkpoint)  # a missing or foreign checkpoint fails here, with the usual message
    key = hashlib.sha256(f"{sha256_file(checkpoint)}{options}".encode()).hexdigest()[:16]
    onnx_dir = CACHE_DIR / key
    if not (onnx_dir / "manifest.json").is_file():
        from export.onnx import export_all

        export_all(checkpoint, onnx_dir, options, renderer=False)
    return OrtModel(onnx_dir, threads)
