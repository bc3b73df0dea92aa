"""The trained policy and its frozen reference: LoRA adapters (peft) or the full network, EMA weights, and the
engine checkpoint that every command loads.

With LoRA the reference is the same network with its adapters off (`peft`'s `disable_adapter()`), so no second
copy is kept; a full fine-tune keeps a frozen copy. `export` merges the adapters (and the EMA weights) into a
plain MotionTransformer: the checkpoint has the shipped network's keys and loads with --checkpoint everywhere.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn

from engine.motion.model import MotionTransformer

# The Linear layers LoRA adapts: those called as modules (AdaLN's layers are read as weights by
# engine.motion.model.adaln, which an adapter would not reach).
LORA_TARGETS = ["qkv", "proj", "mlp.0", "mlp.2"]


class Policy:
    """`net` is the MotionTransformer to call (adapters inside it with LoRA); `reference()` a context in which
    a model gives the frozen reference's outputs."""

    def __init__(self, model: MotionTransformer, lora_rank: int = 8, lora_alpha: float = 16.0):
        self.lora = lora_rank > 0
        if self.lora:
            from peft import LoraConfig, get_peft_model

            self._peft = get_peft_model(model, LoraConfig(r=lora_rank, lora_alpha=lora_alpha,
                                                          target_modules=LORA_TARGETS))
            self.net: MotionTransformer = self._peft.base_model.model
            self._ref = None
        else:
            self._peft = None
            self.net = model
            self._ref = copy.deepcopy(model).requires_grad_(False)
        self.params = [p for p in self.net.parameters() if p.requires_grad]

    @contextlib.contextmanager
    def reference(self) -> Iterator[MotionTransformer]:
        """The frozen reference network (the policy's own with adapters off, under LoRA)."""
        if self.lora:
            with self._peft.disable_adapter(), torch.no_grad():
                yield self.net
        else:
            with torch.no_grad():
                yield self._ref

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The tensors training changes (the adapters under LoRA), by name."""
        return {n: p.detach().clone() for n, p in self.net.named_parameters() if p.requires_grad}

    def load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        named = dict(self.net.named_parameters())
        with torch.no_grad():
            for n, v in state.items():
                named[n].copy_(v)

    def export(self, weights: dict[str, torch.Tensor] | None = None) -> MotionTransformer:
        """A plain MotionTransformer with `weights` (default: the current ones; e.g. the EMA's) and the adapters
        merged in; the policy itself is untouched."""
        if self._peft is None:
            out = copy.deepcopy(self.net)
            if weights is not None:
                load_named(out, weights)
            return out.eval()
        peft = copy.deepcopy(self._peft)
        if weights is not None:
            load_named(peft.base_model.model, weights)
        return peft.merge_and_unload().eval()


def load_named(module: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    named = dict(module.named_parameters())
    with torch.no_grad():
        for n, v in weights.items():
            named[n].copy_(v)


class EMA:
    """An exponential moving average of the trainable tensors (decay warmed up like train.pretrain's)."""

    def __init__(self, policy: Policy, decay: float):
        self.decay = decay
        self.shadow = policy.trainable_state()

    @torch.no_grad()
    def update(self, policy: Policy, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for n, p in policy.net.named_parameters():
            if p.requires_grad:
                self.shadow[n].lerp_(p.detach(), 1.0 - d)
