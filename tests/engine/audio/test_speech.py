import struct

import numpy as np
import pytest
import torch

from engine import assets
from engine.audio.frontend import AudioFeatures, extract_features
from engine.audio.io import load_audio
from engine.audio.mel import log_mel
from engine.audio.speech import (
    TOKENS_PER_FRAME,
    WhisperEncoder,
    WhisperEncoderConfig,
    load_speech_encoder,
    read_ctranslate2,
    weights_path,
)
from engine.backends.eager import TorchStep
from engine.errors import UserError
from engine.motion.generator import StreamingGenerator, silence
from engine.motion.model import MotionConfig, MotionTransformer
from engine.motion.sampler import SamplerOptions
from engine.timebase import MELS_PER_FRAME, N_MELS


@pytest.fixture(scope="module")
def speech_mel():
    return log_mel(load_audio(assets.SAMPLE_SPEECH))


def test_encoder_equals_ctranslate2_on_the_same_window(speech_mel):
    """Our module with weights from our reader == CTranslate2's own whisper encoder (float32)."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    window = np.ascontiguousarray(speech_mel[100:300])  # 2 s of speech
    with torch.inference_mode():
        ours = load_speech_encoder()(torch.from_numpy(window)[None]).numpy()
    model = ctranslate2.models.Whisper(str(weights_path().parent), device="cpu", compute_type="float32")
    theirs = np.array(model.encode(ctranslate2.StorageView.from_array(window.T[None].copy()), to_cpu=True))
    assert ours.shape == theirs.shape == (1, 100, 384)
    assert np.abs(ours - theirs).max() < 1e-3 * np.abs(theirs).max()


def test_reader_reads_the_encoder_and_nothing_else():
    tensors = read_ctranslate2(weights_path(), "encoder/")
    assert tensors["encoder/conv1/weight"].shape == (384, 80, 3)
    assert tensors["encoder/layer_3/self_attention/linear_0/weight"].shape == (1152, 384)
    assert tensors["encoder/position_encodings/encodings"].shape == (1500, 384)
    assert all(name.startswith("encoder/") for name in tensors)
    params = sum(t.size for n, t in tensors.items() if "position" not in n and "num_heads" not in n)
    assert 7.5e6 < params < 8.5e6  # whisper tiny's encoder


def test_reader_refuses_another_format_with_a_clear_error(tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_bytes(struct.pack("<I", 5) + b"\0" * 16)
    with pytest.raises(UserError, match="version 5"):
        read_ctranslate2(bad)


def test_fewer_layers_is_a_prefix_of_the_network(speech_mel):
    mel = torch.from_numpy(speech_mel[:100])[None]
    full, two = load_speech_encoder(4), load_speech_encoder(2)
    with torch.inference_mode():
        x = full.stem(mel)
        for block in full.blocks[:2]:
            x = block(x)
        assert torch.allclose(two(mel), x, atol=1e-5)


def test_frames_are_the_window_tail_two_tokens_each():
    torch.manual_seed(0)
    encoder = WhisperEncoder(WhisperEncoderConfig.tiny())
    mel = torch.randn(2, 10, MELS_PER_FRAME, N_MELS)
    out = encoder.frames(mel, 3)
    assert out.shape == (2, 3, TOKENS_PER_FRAME, 32)
    assert torch.equal(out.flatten(1, 2), encoder(mel.flatten(1, 2))[:, -3 * TOKENS_PER_FRAME:])
    with pytest.raises(ValueError, match="even number"):
        encoder(torch.randn(1, 7, N_MELS))


def test_frames_skip_the_last_blocks_unused_tokens_and_give_the_same_features(speech_mel):
    """The shipped encoder's last block computes only the chunk's tokens (7.8 -> 7.1 ms a window on ONNX
    Runtime, bit-exact there: benchmarks/results/stage_costs.md); they equal the full network's to float
    rounding."""
    encoder = load_speech_encoder()
    mel = torch.from_numpy(speech_mel[:200]).reshape(2, 25, MELS_PER_FRAME, N_MELS)
    with torch.inference_mode():
        full = encoder(mel.flatten(1, 2))[:, -5 * TOKENS_PER_FRAME:]
        fast = encoder.frames(mel, 5).flatten(1, 2)
    assert fast.shape == full.shape == (2, 10, 384)
    assert torch.allclose(fast, full, atol=1e-5 * full.abs().max().item())


def test_streaming_encoder_equals_the_windowed_offline_encoder():
    """Chunk by chunk, the generator's speech features are the encoder over the window of the whole clip's
    mel that ends with the chunk's lookahead (silence before the stream), and every window has one size."""
    cfg = MotionConfig.tiny()
    L, K, S = cfg.chunk, cfg.lookahead, cfg.speech_window
    features = extract_features(load_audio(assets.SAMPLE_SPEECH)[:16000 * 2])
    windows, seen = [], []

    class Spy(TorchStep):
        def encode(self, mel):
            windows.append(tuple(mel.shape))
            seen.append(super().encode(mel))
            return seen[-1]

    generator = StreamingGenerator(Spy(MotionTransformer(cfg), SamplerOptions(steps=1)))
    padded = AudioFeatures.concat([features, silence(L + K)])
    for s in range(0, len(features), L):
        generator.step(padded[s: s + L + K])
    offline = AudioFeatures.concat([silence(S - L - K), padded]).mel
    encoder = load_speech_encoder(cfg.speech_layers)
    with torch.inference_mode():
        for j, got in enumerate(seen):
            want = encoder.frames(torch.from_numpy(offline[j * L: j * L + S])[None], cfg.audio_frames)
            assert torch.allclose(got, want, atol=1e-5), j
    assert set(windows) == {(1, S, MELS_PER_FRAME, N_MELS)}  # constant cost per chunk, however long the stream
