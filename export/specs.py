"""What gets exported (DESIGN.md §9): each graph the engine runs per chunk, described once.

A GraphSpec wraps one of the engine's own modules (never a fork) in a thin nn.Module whose
forward takes and returns plain tensors in a fixed order, with names, static chunk shapes, a
dummy-input maker and the tolerance its exported form must meet against torch.

Graphs, for one stream (batch 1) of a generator with chunk L, lookahead K, past P, window W:
- speech:   the speech encoder over the chunk's speech window of mel (S frames ending with the
            lookahead) -> the speech features of its P + L + K audio frames. Streaming state is
            explicit: the caller keeps the audio frames before the chunk and sends the window.
- embed:    the audio encoders + emotion/reference embedding of the P + L + K window.
- denoise:  one velocity evaluation: noisy chunk, flow time, embedded conditions, KV cache in.
- commit:   the clean chunk run at t = 1 against a hidden cache; the cache with its keys pushed out.
- chunk:    a whole chunk in one call: guidance batch, embed, N Euler steps unrolled, clamp, commit.
            The ONNX Runtime backend runs speech, then this one (two calls a chunk).
- renderer: motion coefficients (B, D) -> frames (B, 3, S, S) for one avatar.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from engine.backends.eager import chunk_step, speech_encoder
from engine.motion.cache import KVCache
from engine.motion.model import NO_EMOTION, Conditions, Embedded, MotionTransformer
from engine.motion.sampler import SamplerOptions
from engine.timebase import MELS_PER_FRAME, N_MELS

CACHE = ("keys", "values", "valid", "pos")


@dataclass(frozen=True)
class Tensorspec:
    shape: tuple[int, ...]
    dtype: torch.dtype

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": str(self.dtype).removeprefix("torch.")}


@dataclass(frozen=True)
class GraphSpec:
    name: str
    module: nn.Module  # forward(*inputs in `inputs` order) -> tuple of outputs in `outputs` order
    inputs: dict[str, Tensorspec]
    outputs: tuple[str, ...]
    atol: float  # an exported graph must match torch within atol + rtol * |torch| on every output
    rtol: float = 1e-3
    batched: bool = False  # exported with a dynamic stream batch (batch_axis), so one call serves many streams

    def dummy(self, seed: int = 0, batch: int = 1) -> dict[str, Tensor]:
        """Random inputs of the right shapes and ranges (a cache with every slot valid, positions in order),
        `batch` streams where the graph is batched."""
        g = torch.Generator().manual_seed(seed)
        out = {}
        for name, spec in self.inputs.items():
            if batch != 1:
                shape = list(spec.shape)
                shape[batch_axis(name)] = batch
                spec = Tensorspec(tuple(shape), spec.dtype)
            if name == "valid":
                out[name] = torch.ones(spec.shape, dtype=torch.bool)
            elif name == "pos":
                w = spec.shape[-1]
                out[name] = torch.arange(100, 100 + w).expand(*spec.shape).clone()
            elif name == "emotion":
                out[name] = torch.randint(0, NO_EMOTION + 1, spec.shape, generator=g)
            elif name == "audio_on":
                out[name] = torch.ones(spec.shape, dtype=torch.bool)
            elif name == "t":
                out[name] = torch.rand(spec.shape, generator=g)
            elif name == "coeffs":
                out[name] = 0.3 * torch.randn(spec.shape, generator=g)
            else:
                out[name] = torch.randn(spec.shape, generator=g)
        return out

    @torch.inference_mode()
    def reference(self, inputs: dict[str, Tensor]) -> dict[str, np.ndarray]:
        """What torch computes for these inputs: the numbers every exported form must match."""
        result = self.module(*(inputs[n] for n in self.inputs))
        result = result if isinstance(result, tuple) else (result,)
        return {name: value.numpy() for name, value in zip(self.outputs, result, strict=True)}


def batch_axis(name: str) -> int:
    """Where a batched graph's input or output `name` holds its streams: the caches' keys and values are
    (layers, B, ...), everything else is (B, ...)."""
    return 1 if name.removeprefix("new_") in ("keys", "values") else 0


# --------------------------------------------------------------------------------------- wrappers


def _cache(keys: Tensor, values: Tensor, valid: Tensor, pos: Tensor) -> KVCache:
    return KVCache(keys, values, valid, pos)


class EmbedGraph(nn.Module):
    def __init__(self, model: MotionTransformer):
        super().__init__()
        self.model = model

    def forward(self, speech, prosody, stats, audio_on, emotion, ref):
        return tuple(self.model.embed(Conditions(speech, prosody, stats, audio_on, emotion, ref)))


class DenoiseGraph(nn.Module):
    def __init__(self, model: MotionTransformer):
        super().__init__()
        self.model = model

    def forward(self, x_t, t, levels, static, keys, values, valid, pos):
        return self.model(x_t, t, Embedded(levels, static), _cache(keys, values, valid, pos))


class CommitGraph(nn.Module):
    def __init__(self, model: MotionTransformer):
        super().__init__()
        self.model = model

    def forward(self, clean, levels, static, keys, values, valid, pos):
        return tuple(self.model.commit(clean, Embedded(levels, static), _cache(keys, values, valid, pos)))


class ChunkGraph(nn.Module):
    """StreamingGenerator.step's tensor work for one chunk: sample (guided as configured) and commit."""

    def __init__(self, model: MotionTransformer, options: SamplerOptions):
        super().__init__()
        self.model, self.options = model, options

    def forward(self, speech, prosody, stats, emotion, ref, noise, keys, values, valid, pos):
        cond = Conditions(speech, prosody, stats, torch.ones_like(emotion, dtype=torch.bool), emotion, ref)
        clean, cache = chunk_step(self.model, self.options, cond, noise, _cache(keys, values, valid, pos))
        return (clean, *cache)  # the Euler steps unrolled: `steps` is fixed per exported graph


class SpeechGraph(nn.Module):
    """StreamingGenerator.encode: the speech window's mel -> the chunk's speech-encoder tokens."""

    def __init__(self, encoder: nn.Module, frames: int):
        super().__init__()
        self.encoder, self.frames = encoder, frames

    def forward(self, mel):
        return self.encoder.frames(mel, self.frames)


class RendererGraph(nn.Module):
    def __init__(self, renderer: nn.Module):
        super().__init__()
        self.renderer = renderer

    def forward(self, coeffs):
        return self.renderer(coeffs)


# ------------------------------------------------------------------------------------------ specs


def generator_specs(model: MotionTransformer, options: SamplerOptions) -> list[GraphSpec]:
    """The generator's graphs for one stream of `model` sampled with `options` (chunk graph)."""
    cfg = model.config
    model = model.eval()
    L, A, D, d, W = cfg.chunk, cfg.audio_frames, cfg.motion_dim, cfg.d_model, cfg.context
    f32, i64, b = torch.float32, torch.int64, torch.bool
    cache = {
        "keys": Tensorspec((cfg.n_layers, 1, cfg.n_heads, W, d // cfg.n_heads), f32),
        "values": Tensorspec((cfg.n_layers, 1, cfg.n_heads, W, d // cfg.n_heads), f32),
        "valid": Tensorspec((1, W), b),
        "pos": Tensorspec((1, W), i64),
    }
    audio = {"speech": Tensorspec((1, A, cfg.speech_tokens, cfg.speech_dim), f32),
             "prosody": Tensorspec((1, A, cfg.n_prosody), f32), "stats": Tensorspec((1, cfg.n_stats), f32)}
    embedded = {"levels": Tensorspec((1, L, 3, d), f32), "static": Tensorspec((1, d), f32)}
    new_cache = tuple(f"new_{n}" for n in CACHE)
    return [
        # whisper's activations reach ~10: 1e-3 is still 1e-4 relative
        GraphSpec("speech", SpeechGraph(speech_encoder(cfg), A),
                  {"mel": Tensorspec((1, cfg.speech_window, MELS_PER_FRAME, N_MELS), f32)}, ("speech",), atol=1e-3,
                  batched=True),
        GraphSpec("embed", EmbedGraph(model), {**audio, "audio_on": Tensorspec((1,), b),
                                                "emotion": Tensorspec((1,), i64), "ref": Tensorspec((1, D), f32)},
                  ("levels", "static"), atol=1e-4),
        GraphSpec("denoise", DenoiseGraph(model), {"x_t": Tensorspec((1, L, D), f32), "t": Tensorspec((1,), f32),
                                                    **embedded, **cache}, ("velocity",), atol=1e-4),
        GraphSpec("commit", CommitGraph(model), {"clean": Tensorspec((1, L, D), f32), **embedded, **cache},
                  new_cache, atol=1e-4),
        # N steps compound the per-call error, and guidance scales it by up to 1 + g_audio + g_emotion
        GraphSpec("chunk", ChunkGraph(model, options), {**audio, "emotion": Tensorspec((1,), i64),
                                                         "ref": Tensorspec((1, D), f32),
                                                         "noise": Tensorspec((1, L, D), f32), **cache},
                  ("clean", *new_cache), atol=1e-3, batched=True),
    ]


def renderer_spec(renderer: nn.Module, batch: int = 1) -> GraphSpec:
    """The renderer of one avatar, `batch` frames a call."""
    from engine.motion import spec as motion

    return GraphSpec("renderer", RendererGraph(renderer.eval()), {"coeffs": Tensorspec((batch, motion.D), torch.float32)},
                     ("frames",), atol=2e-3)  # in [0, 1]: half a grey level of 8-bit video

