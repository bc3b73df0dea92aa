"""The artifacts behind the exported backends, made once and cached (engine.backends runs them).

`prepare(checkpoint, sampler, backend)` is what engine/cli.py hands engine.backends.load: the generator's
speech and chunk graphs exported to ONNX and validated (export.onnx) into a cache directory keyed by the
weights' hash, the sampler options and the graph code's digest, and for `tensorrt` those graphs built
into engines under it (export.tensorrt). A changed weight file, sampler or graph code gets a new export.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

from engine.io import sha256_file
from engine.motion.sampler import SamplerOptions

# what the generator graphs are traced from: the model, its cache and sampler, the export wrappers
GRAPH_CODE = ("engine.audio.speech", "engine.motion.model", "engine.motion.cache", "engine.motion.sampler",
              "engine.backends.eager", "export.specs", "export.onnx")
CACHE_DIR = Path(os.environ.get("AVATAR_CACHE", Path.home() / ".cache" / "avatar-engine")) / "onnx"
TENSORRT_GRAPHS = ("speech", "chunk")


def export_dir(checkpoint: Path, options: SamplerOptions) -> Path:
    """Where the export of these weights, sampler options and graph code is cached."""
    key = f"{sha256_file(checkpoint)}{options}{code_digest()}"
    return CACHE_DIR / hashlib.sha256(key.encode()).hexdigest()[:16]


def code_digest(modules: tuple[str, ...] = GRAPH_CODE) -> str:
    """sha256 over the source of the modules an exported generator graph is traced from: a cached
    export (and its TensorRT engines) is reused only while that code is unchanged."""
    digest = hashlib.sha256()
    for name in modules:
        digest.update(Path(importlib.util.find_spec(name).origin).read_bytes())
    return digest.hexdigest()


def prepare(checkpoint: Path | None, sampler: SamplerOptions, backend: str) -> Path:
    """The directory of the generator graphs for `backend` (onnxruntime or tensorrt): exported (and built)
    on first use, then cached."""
    from engine import assets

    checkpoint = Path(checkpoint or assets.DEFAULT_MOTION)
    graphs = export_dir(checkpoint, sampler)
    if not (graphs / "manifest.json").is_file():
        from export.onnx import export_all

        export_all(checkpoint, graphs, sampler, renderer=False)
    if backend == "tensorrt":
        for name in TENSORRT_GRAPHS:
            build_engine(graphs, name)
    return graphs


def build_engine(graphs: Path, name: str) -> Path:
    """graphs/tensorrt/<name>.engine, built from graphs/<name>.onnx the first time."""
    from export.tensorrt import EngineBuilder, OnnxGraph, load_tensorrt

    engine = graphs / "tensorrt" / f"{name}.engine"
    if not engine.is_file():
        print(f"building the TensorRT engine of {name} (once; cached in {engine.parent}) ...", file=sys.stderr)
        engine.parent.mkdir(parents=True, exist_ok=True)
        shapes = {n: s["shape"] for n, s in json.loads((graphs / "manifest.json").read_text())["graphs"][name]["inputs"].items()}
        with tempfile.TemporaryDirectory(dir=engine.parent) as tmp:  # an interrupted build leaves no engine
            EngineBuilder(load_tensorrt()).build(OnnxGraph(name, graphs / f"{name}.onnx", shapes), Path(tmp))
            os.replace(Path(tmp) / engine.name, engine)
    return engine
