"""`--backend torch` on a CPU: the motion transformer and the speech encoder themselves, eager.

`chunk_step` is the reference every backend must match: the exported chunk graph is traced from it
(export.specs) and the CUDA graph captures it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from engine.audio.speech import WhisperEncoder, load_speech_encoder
from engine.motion.cache import KVCache
from engine.motion.model import Conditions, Embedded, MotionConfig, MotionTransformer
from engine.motion.sampler import SamplerOptions, guidance_batch, sample


def speech_encoder(config: MotionConfig, device=None) -> WhisperEncoder:
    """The pretrained speech encoder that `config`'s generator was trained on, on `device`."""
    encoder = load_speech_encoder(config.speech_layers)  # shared by every CPU stream
    return encoder if torch.device(device or "cpu").type == "cpu" else copy.deepcopy(encoder).to(device)


def chunk_step(model: MotionTransformer, options: SamplerOptions, cond: Conditions, noise: torch.Tensor,
               cache: KVCache) -> tuple[torch.Tensor, KVCache]:
    """A chunk's tensor work for B streams, a pure function of tensors with static shapes:
    (clean (B, L, D), new cache)."""
    if options.guided:  # the commit's conditions are the guidance batch's last copy: encoded once, not twice
        emb = model.embed(guidance_batch(cond))
        clean, emb = sample(model, noise, emb, cache, options), Embedded(*(e[-noise.shape[0]:] for e in emb))
    else:
        emb = model.embed(cond)
        clean = sample(model, noise, emb, cache, options)
    clean = clean.clamp(-1.0, 1.0)  # the spec's bounds in normalized units
    return clean, model.commit(clean, emb, cache)


@dataclass(frozen=True)
class TorchStep:
    """ChunkStep of a torch MotionTransformer (eval mode) sampled with `sampler`."""

    model: MotionTransformer
    sampler: SamplerOptions = field(default_factory=SamplerOptions)
    speech: WhisperEncoder = field(default=None, repr=False)  # default: the config's, on the model's device

    def __post_init__(self):
        self.model.eval()
        if self.speech is None:
            object.__setattr__(self, "speech", speech_encoder(self.config, self.device))

    @property
    def config(self) -> MotionConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def empty_cache(self, batch: int = 1) -> KVCache:
        return KVCache.empty(self.config, batch, self.device)

    @torch.inference_mode()  # ~8% faster than no_grad per forward on CPU
    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        return self.speech.frames(mel, self.config.audio_frames)

    @torch.inference_mode()
    def __call__(self, cond: Conditions, noise: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        return chunk_step(self.model, self.sampler, cond, noise, cache)

    def with_sampler(self, sampler: SamplerOptions) -> TorchStep:
        return self if sampler == self.sampler else TorchStep(self.model, sampler, self.speech)
