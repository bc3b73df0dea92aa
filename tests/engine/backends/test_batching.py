"""Continuous batching: streams stepping from their own threads share backend calls, and each gets exactly
the motion it gets alone (same seeds), while streams join and leave."""

import threading

import numpy as np
import pytest
import torch

from engine.backends.batching import BatchedStep
from engine.backends.eager import TorchStep
from engine.motion.generator import StreamingGenerator
from engine.motion.model import MotionConfig, MotionTransformer
from engine.motion.sampler import SamplerOptions
from tests.engine.backends.test_cuda_graph import windows
from tests.engine.motion.test_model import perturb_gates

GUIDED = SamplerOptions(steps=2, guidance_audio=2.0, guidance_emotion=1.5)


class Slow(TorchStep):
    """The torch step, 20 ms slower a call: calls arriving meanwhile queue up and batch."""

    def __call__(self, *args):
        threading.Event().wait(0.02)
        return super().__call__(*args)


@pytest.fixture(scope="module")
def step():
    torch.manual_seed(0)
    return Slow(perturb_gates(MotionTransformer(MotionConfig.tiny())), GUIDED)


def alone(step, feats, seed: int) -> np.ndarray:
    generator = StreamingGenerator(step, seed=seed)
    return np.concatenate([generator.step(w, "happy") for w in feats])


def test_streams_in_threads_share_calls_and_each_gets_its_motion_alone(step):
    feats = {seed: windows(step.config, 8, seed=seed) for seed in range(4)}
    expected = {seed: alone(step, f, seed) for seed, f in feats.items()}
    batched = BatchedStep(step)
    got, start = {}, threading.Barrier(4)

    def run(seed: int, delay_chunks: int):
        generator = StreamingGenerator(batched, seed=seed)
        start.wait()
        for _ in range(delay_chunks):  # joins late: the others are mid-stream
            threading.Event().wait(0.02)
        got[seed] = np.concatenate([generator.step(w, "happy") for w in feats[seed]])

    # streams 0-1 start together; 2 joins two chunks in; 3 runs only 4 chunks then leaves
    feats[3] = feats[3][:4]
    expected[3] = expected[3][: 4 * step.config.chunk]
    threads = [threading.Thread(target=run, args=(seed, delay)) for seed, delay in ((0, 0), (1, 0), (2, 2), (3, 0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        for seed in feats:
            # batched products round like the single ones to ~1e-7: the motion is the stream's own
            np.testing.assert_allclose(got[seed], expected[seed], atol=1e-5, err_msg=f"stream {seed}")
        total = sum(len(f) for f in feats.values())
        assert batched.streams == 2 * total  # every chunk's encode and step went through, none twice
        assert batched.calls < batched.streams * 0.8, "calls met in the queue but were not batched"
    finally:
        batched.close()


def test_a_failing_call_reaches_its_callers_and_the_worker_goes_on(step):
    batched = BatchedStep(step)
    generator = StreamingGenerator(batched)
    try:
        with pytest.raises(RuntimeError):
            batched.encode(torch.zeros(1, 3, 4, 80))  # a window too short for the encoder's convolutions
        assert generator.step(windows(step.config, 1)[0]).shape == (step.config.chunk, step.config.motion_dim)
    finally:
        batched.close()
    with pytest.raises(RuntimeError, match="closed"):
        generator.step(windows(step.config, 1)[0])
