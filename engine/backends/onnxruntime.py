"""`--backend onnxruntime`: the exported speech and chunk graphs on ONNX Runtime's CPU provider.

The chunk graph is the whole chunk in one call (guidance batch, embed, the Euler steps unrolled, clamp,
commit), traced from engine.backends.eager.chunk_step; both graphs take any batch of streams. The
sampler options are baked into the graph: another sampler needs another export.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from engine.backends import same_sampler
from engine.errors import UserError
from engine.motion.cache import KVCache
from engine.motion.model import Conditions, MotionConfig
from engine.motion.sampler import SamplerOptions


def ort_session(path: str | Path, threads: int = 1):
    """An ONNX Runtime CPU session tuned for our small graphs: every graph optimization, `threads` intra-op."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def read_manifest(graphs: Path) -> dict:
    """The export manifest of a directory of generator graphs; a UserError naming the fix if it is not one."""
    path = Path(graphs) / "manifest.json"
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    if not {"chunk", "speech"} <= set(manifest.get("graphs", {})):
        raise UserError(f"{graphs} holds no exported generator; make one with "
                        f"`avatar export onnx --checkpoint C --out {graphs}`")
    return manifest


class OrtStep:
    """ChunkStep of the generator graphs exported into `graphs` (avatar export onnx), `threads` intra-op."""

    device = torch.device("cpu")

    def __init__(self, graphs: str | Path, threads: int = 1):
        self.dir = Path(graphs)
        manifest = read_manifest(self.dir)
        self.config = MotionConfig.from_dict(manifest["config"])
        self.sampler = SamplerOptions(**manifest["sampler"])
        self.session = ort_session(self.dir / manifest["graphs"]["chunk"]["file"], threads)
        self.speech_session = ort_session(self.dir / manifest["graphs"]["speech"]["file"], threads)

    def empty_cache(self, batch: int = 1) -> KVCache:
        return KVCache.empty(self.config, batch)

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.speech_session.run(None, {"mel": np.asarray(mel, np.float32)})[0])

    def __call__(self, cond: Conditions, noise: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        feed = {"speech": cond.speech, "prosody": cond.prosody, "stats": cond.stats, "emotion": cond.emotion,
                "ref": cond.ref, "noise": noise, **cache._asdict()}
        clean, *new = self.session.run(None, {name: value.numpy() for name, value in feed.items()})
        return torch.from_numpy(clean), KVCache(*(torch.from_numpy(c) for c in new))

    def with_sampler(self, sampler: SamplerOptions) -> OrtStep:
        return same_sampler(self, sampler, str(self.dir))
