"""The torch CUDA path: the chunk step captured as a CUDA graph (engine.backends.cuda_graph).

The gpu tests run wherever torch sees a CUDA device (skipped here, on the CPU-only CI machine); the
rest check, on any machine, what happens without one.
"""

import numpy as np
import pytest
import torch

from engine.audio.frontend import AudioFeatures
from engine.backends import load
from engine.backends.cuda_graph import CudaGraphStep
from engine.backends.eager import TorchStep
from engine.errors import UserError
from engine.motion.generator import StreamingGenerator
from engine.motion.model import MotionConfig, MotionTransformer
from engine.motion.sampler import SamplerOptions
from engine.runtime import resolve_device
from engine.timebase import MELS_PER_FRAME, N_MELS
from tests.engine.motion.test_model import perturb_gates

GUIDED = SamplerOptions(steps=3, guidance_audio=2.0, guidance_emotion=1.5)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device here")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return perturb_gates(MotionTransformer(MotionConfig.tiny())).eval()


def windows(config: MotionConfig, count: int, seed: int = 0) -> list[AudioFeatures]:
    """Speech-like feature windows of L + K frames, the same on every device."""
    rng, n = np.random.default_rng(seed), config.chunk + config.lookahead
    out = []
    for _ in range(count):
        energy = rng.uniform(-60, -10, n).astype(np.float32)
        out.append(AudioFeatures(rng.standard_normal((n, MELS_PER_FRAME, N_MELS)).astype(np.float32), energy,
                                 rng.uniform(0, 300, n).astype(np.float32), rng.uniform(0, 1, n).astype(np.float32),
                                 rng.uniform(0, 1, n).astype(np.float32)))
    return out


def stream(generator: StreamingGenerator, feats: list[AudioFeatures]) -> np.ndarray:
    cfg = generator.config
    noise = torch.Generator().manual_seed(1)
    return np.concatenate([generator.step(w, "happy", noise=torch.randn(cfg.chunk, cfg.motion_dim, generator=noise))
                           for w in feats])


def test_a_cpu_model_streams_eagerly_and_cannot_be_captured(model):
    assert type(load("torch", None, GUIDED)) is TorchStep
    with pytest.raises(ValueError, match="CUDA device"):
        CudaGraphStep(model, GUIDED)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_asking_for_cuda_without_a_gpu_says_what_to_do():
    with pytest.raises(UserError, match="--device cuda.*sees no CUDA GPU.*--device cpu"):
        resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.gpu
@needs_cuda
def test_captured_chunks_match_eager_cuda_and_the_cpu(model):
    from engine.backends import cuda_graph

    feats = windows(model.config, 12)
    cpu = stream(StreamingGenerator(TorchStep(model, GUIDED)), feats)
    on_gpu = model.to("cuda")
    try:
        step = CudaGraphStep(on_gpu, GUIDED)
        cuda_graph.warm_up(step)
        graph = cuda_graph._GRAPHS[on_gpu][GUIDED, 1].graph
        eager = StreamingGenerator(TorchStep(on_gpu, GUIDED))
        captured, other = StreamingGenerator(step), StreamingGenerator(step)
        graph_motion = stream(captured, feats)
        np.testing.assert_allclose(graph_motion, stream(eager, feats), atol=1e-5)
        np.testing.assert_allclose(graph_motion, cpu, atol=1e-3)
        # one graph, captured at warm-up, replayed for every chunk of every stream; a stream's cache
        # is its own: a second stream from the start gives the same motion again
        np.testing.assert_allclose(stream(other, feats), graph_motion, atol=1e-6)
        assert cuda_graph._GRAPHS[on_gpu][GUIDED, 1].graph is graph and len(cuda_graph._GRAPHS[on_gpu]) == 1
        # other sampler options are another graph
        two = SamplerOptions(steps=2)
        captured.chunk_step, eager.chunk_step = step.with_sampler(two), eager.chunk_step.with_sampler(two)
        captured.reset(), eager.reset()
        np.testing.assert_allclose(stream(captured, feats), stream(eager, feats), atol=1e-5)
        assert len(cuda_graph._GRAPHS[on_gpu]) == 2
    finally:
        model.to("cpu")
