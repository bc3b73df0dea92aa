"""Backends for the generator: `--backend torch` (the module itself, on CPU or, with `--device cuda`,
replayed from a CUDA graph: engine.motion.cuda), `--backend onnxruntime` (the exported chunk graph:
one ONNX Runtime call per chunk, its Euler steps unrolled inside) or `--backend tensorrt` (that graph
built into a TensorRT engine, run with cuda-python: export.tensorrt.TensorRTGraph).

The renderer runs on torch for every backend, on the CPU through `Renderer.frames` (OpenCV's remap),
on a GPU as its float graph: the exported renderer on ONNX Runtime's CPU GridSample is 5x slower
than `frames` at 512 px here, while the generator runs 3.5x faster on ONNX Runtime
(benchmarks/results/backend_bench.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from engine.errors import UserError
from engine.io import sha256_file
from engine.motion.cache import KVCache
from engine.motion.generator import StreamingGenerator
from engine.motion.model import Conditions, MotionConfig
from engine.motion.sampler import SamplerOptions

BACKENDS = ("torch", "onnxruntime", "tensorrt")
# what the chunk graph is traced from: the model, its cache and sampler, the export wrappers
GRAPH_CODE = ("engine.audio.speech", "engine.motion.model", "engine.motion.cache", "engine.motion.sampler", "engine.motion.generator",
              "export.specs", "export.onnx")
CACHE_DIR = Path(os.environ.get("AVATAR_CACHE", Path.home() / ".cache" / "avatar-engine")) / "onnx"


class OrtModel:
    """A generator exported by `avatar export onnx`, run by ONNX Runtime; stands in for the torch
    MotionTransformer wherever a driver takes one (it has `.config` and makes stream generators)."""

    def __init__(self, onnx_dir: str | Path, threads: int = 1, session=None, speech_session=None):
        """session, speech_session: what runs the chunk and speech graphs (default: ONNX Runtime sessions
        of them; tensorrt_session gives TensorRT engines of them)."""
        from export.onnx import ort_session

        onnx_dir = Path(onnx_dir)
        manifest_path = onnx_dir / "manifest.json"
        graphs = json.loads(manifest_path.read_text())["graphs"] if manifest_path.is_file() else {}
        if not {"chunk", "speech"} <= set(graphs):
            raise UserError(f"{onnx_dir} holds no exported generator; make one with "
                            f"`avatar export onnx --checkpoint C --out {onnx_dir}`")
        manifest = json.loads(manifest_path.read_text())
        self.dir, self.manifest = onnx_dir, manifest
        self.config = MotionConfig.from_dict(manifest["config"])
        self.sampler = SamplerOptions(**manifest["sampler"])
        self.session = session or ort_session(onnx_dir / manifest["graphs"]["chunk"]["file"], threads)
        self.speech_session = speech_session or ort_session(onnx_dir / manifest["graphs"]["speech"]["file"], threads)

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

    def encode(self, mel: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.ort.speech_session.run(None, {"mel": np.asarray(mel, np.float32)[None]})[0])

    def _advance(self, cond: Conditions, noise: torch.Tensor) -> torch.Tensor:
        feed = {"speech": cond.speech, "prosody": cond.prosody, "stats": cond.stats, "emotion": cond.emotion,
                "ref": cond.ref, "noise": noise, **self.cache._asdict()}
        clean, *cache = self.ort.session.run(None, {name: value.numpy() for name, value in feed.items()})
        self.cache = KVCache(*(torch.from_numpy(c) for c in cache))
        return torch.from_numpy(clean)


def export_dir(checkpoint: Path, options: SamplerOptions) -> Path:
    """Where the export of these weights, sampler options and graph code is cached."""
    key = f"{sha256_file(checkpoint)}{options}{code_digest()}"
    return CACHE_DIR / hashlib.sha256(key.encode()).hexdigest()[:16]


def code_digest(modules: tuple[str, ...] = GRAPH_CODE) -> str:
    """sha256 over the source of the modules an exported generator graph is traced from: a cached
    export (and its TensorRT engine) is reused only while that code is unchanged."""
    import importlib.util

    digest = hashlib.sha256()
    for name in modules:
        digest.update(Path(importlib.util.find_spec(name).origin).read_bytes())
    return digest.hexdigest()


def check_backend(backend: str, device: str = "cpu") -> None:
    """A UserError naming the fix when `backend` (with torch on `device`) cannot run here."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "onnxruntime" and device != "cpu":
        raise UserError("--backend onnxruntime runs on the CPU; on a GPU use --backend torch --device cuda "
                        "or --backend tensorrt")
    if backend == "tensorrt":
        from export.tensorrt import runtime_unavailable

        if reason := runtime_unavailable():
            raise UserError(f"--backend tensorrt cannot run here: {reason}. On a CPU use --backend onnxruntime")


def load_motion_model(backend: str, checkpoint: str | Path | None, options: SamplerOptions, threads: int = 1,
                      device: str = "cpu"):
    """The generator for a backend: torch weights (on `device`: cpu, or cuda with its chunk step
    captured as a CUDA graph), their ONNX export on ONNX Runtime (CPU), or that export built into a
    TensorRT engine (GPU). Exports and engines are made once and cached under CACHE_DIR, keyed by the
    weights' hash, the sampler options and the graph code's (code_digest)."""
    from engine import assets
    from engine.motion.learned import load_generator
    from engine.runtime import resolve_device

    check_backend(backend, device)
    if backend == "torch":
        model = load_generator(checkpoint).to(resolve_device(device))
        if device == "cuda":
            from engine.motion.cuda import warm_up

            warm_up(model, options)  # its CUDA graph, captured before any stream runs beside it
        return model
    checkpoint = Path(checkpoint or assets.DEFAULT_MOTION)
    load_generator(checkpoint)  # a missing or foreign checkpoint fails here, with the usual message
    onnx_dir = export_dir(checkpoint, options)
    if not (onnx_dir / "manifest.json").is_file():
        from export.onnx import export_all

        export_all(checkpoint, onnx_dir, options, renderer=False)
    if backend == "onnxruntime":
        return OrtModel(onnx_dir, threads)
    return OrtModel(onnx_dir, session=tensorrt_session(onnx_dir, "chunk"),
                    speech_session=tensorrt_session(onnx_dir, "speech"))


def tensorrt_session(onnx_dir: Path, graph: str):
    """The TensorRT engine of onnx_dir/<graph>.onnx (built into onnx_dir/tensorrt on first use) behind
    ONNX Runtime's `run(None, feed)`, so OrtModel and OrtStreamingGenerator run it unchanged."""
    from export.tensorrt import EngineBuilder, EngineSession, OnnxGraph, load_tensorrt

    engine = onnx_dir / "tensorrt" / f"{graph}.engine"
    if not engine.is_file():
        print(f"building the TensorRT engine of {graph} (once; cached in {engine.parent}) ...", file=sys.stderr)
        engine.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=engine.parent) as tmp:  # an interrupted build leaves no engine
            EngineBuilder(load_tensorrt()).build(OnnxGraph(graph, onnx_dir / f"{graph}.onnx", {}), Path(tmp))
            os.replace(Path(tmp) / engine.name, engine)
    manifest = json.loads((onnx_dir / "manifest.json").read_text())
    return EngineSession(engine, manifest["graphs"][graph]["outputs"])
