"""The motion transformer's key/value cache: explicit, named, fixed-shape tensors.

The cache holds the keys and values of the last W committed (clean) frames for every layer. It
is a ring buffer realized as a shift: `push` drops the oldest L slots and appends the new chunk's
L frames at the end, so slots are always in time order and every shape is static (it exports).
Each slot carries its absolute frame index (`pos`), which the model turns into relative
distances, and a validity flag that hides slots not yet written at the start of a stream.

Nothing is hidden: the cache is a value passed into and returned from the model, never state
inside it. One cache per stream; batch several streams by stacking along B.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class KVCache(NamedTuple):
    keys: Tensor  # (layers, B, heads, W, head_dim) keys of the last W committed frames, oldest first
    values: Tensor  # (layers, B, heads, W, head_dim) their values
    valid: Tensor  # (B, W) bool: False for slots not yet written (start of a stream)
    pos: Tensor  # (B, W) int64 absolute frame index of each slot (empty slots count back from frame 0)

    @staticmethod
    def empty(config, batch: int = 1, device=None, dtype=torch.float32) -> KVCache:
        """A stream's first cache: W empty slots holding frames -W..-1, so the first chunk starts at frame 0."""
        w, head_dim = config.context, config.d_model // config.n_heads
        shape = (config.n_layers, batch, config.n_heads, w, head_dim)
        return KVCache(
            keys=torch.zeros(shape, device=device, dtype=dtype),
            values=torch.zeros(shape, device=device, dtype=dtype),
            valid=torch.zeros(batch, w, device=device, dtype=torch.bool),
            pos=torch.arange(-w, 0, device=device).expand(batch, w).clone(),
        )

    @property
    def window(self) -> int:
        return self.keys.shape[3]

    def next_frame(self) -> Tensor:
        """(B, 1) int64: absolute index of the first frame of the chunk that comes next."""
        return self.pos[:, -1:] + 1

    def push(self, new_keys: Tensor, new_values: Tensor) -> KVCache:
        """Append a chunk's (layers, B, heads, L, head_dim) keys/values; the oldest L slots fall out."""
        n = new_keys.shape[3]
        if new_keys.shape != new_values.shape or new_keys.shape[:3] != self.keys.shape[:3] or n > self.window:
            raise ValueError(
                f"push expects keys and values shaped (layers, B, heads, L<={self.window}, head_dim) like the cache "
                f"{tuple(self.keys.shape)}; got {tuple(new_keys.shape)} and {tuple(new_values.shape)}"
            )
        new_pos = self.next_frame() + torch.arange(n, device=self.pos.device)  # (B, L)
        return KVCache(
            keys=torch.cat([self.keys[:, :, :, n:], new_keys], dim=3),
            values=torch.cat([self.values[:, :, :, n:], new_values], dim=3),
            valid=torch.cat([self.valid[:, n:], torch.ones_like(self.valid[:, :n])], dim=1),
            pos=torch.cat([self.pos[:, n:], new_pos], dim=1),
        )

    def repeat(self, n: int) -> KVCache:
        """The same streams n times along B (classifier-free guidance runs 3 copies in one call)."""
        return KVCache(
            keys=self.keys.repeat(1, n, 1, 1, 1),
            values=self.values.repeat(1, n, 1, 1, 1),
            valid=self.valid.repeat(n, 1),
            pos=self.pos.repeat(n, 1),
        )

    def hidden(self) -> KVCache:
        """The same slots, all marked invalid: attending to it sees only the chunk itself."""
        return self._replace(valid=torch.zeros_like(self.valid))
