"""Every backend is the torch step: one parametrised check over the backends that can run here (the gpu
ones skip, saying why, on a CPU-only machine), plus `load`, `auto` and the seam's errors."""

import numpy as np
import pytest
import torch

from engine import backends
from engine.backends.eager import TorchStep
from engine.backends.tensorrt import runtime_unavailable
from engine.errors import UserError
from engine.motion.generator import StreamingGenerator
from engine.motion.model import MotionTransformer
from engine.motion.sampler import SamplerOptions
from export.runtime import prepare
from tests.engine.backends.test_cuda_graph import stream, windows

GUIDED = SamplerOptions(steps=2, guidance_audio=2.0, guidance_emotion=1.5)
NO_CUDA = None if torch.cuda.is_available() else "torch sees no CUDA device here"
NO_TENSORRT = runtime_unavailable()
BACKENDS = [  # (backend, device, why it cannot run here)
    pytest.param("torch", "cpu", None, id="torch"),
    pytest.param("onnxruntime", "cpu", None, id="onnxruntime", marks=pytest.mark.slow),  # exports the graphs
    pytest.param("torch", "cuda", NO_CUDA, id="cuda-graph", marks=pytest.mark.gpu),
    pytest.param("tensorrt", "cuda", NO_TENSORRT, id="tensorrt", marks=pytest.mark.gpu),
]


def batch_inputs(step, streams: int, seed: int = 0):
    """Conditions, noise and a mid-stream cache of `streams` streams, on the step's device."""
    from export.specs import batch_axis, generator_specs

    spec = {s.name: s for s in generator_specs(MotionTransformer(step.config), step.sampler)}["chunk"]  # shapes only
    inputs = spec.dummy(seed, batch=streams)
    mel = torch.randn(streams, step.config.speech_window, 4, 80, generator=torch.Generator().manual_seed(seed))
    assert all(inputs[n].shape[batch_axis(n)] == streams for n in inputs)
    return mel, inputs


@pytest.mark.parametrize(("backend", "device", "missing"), BACKENDS)
def test_every_backend_computes_the_torch_step(backend, device, missing, tiny_motion, tmp_path, monkeypatch):
    if missing:
        pytest.skip(missing)
    monkeypatch.setattr("export.runtime.CACHE_DIR", tmp_path)
    reference = backends.load("torch", tiny_motion, GUIDED)
    step = backends.load(backend, tiny_motion, GUIDED, device=device, prepare=prepare)
    assert step.config == reference.config and step.sampler == GUIDED
    # a stream, chunk by chunk: the same motion
    feats = windows(step.config, 6)
    np.testing.assert_allclose(stream(StreamingGenerator(step), feats), stream(StreamingGenerator(reference), feats),
                               atol=1e-3 if device == "cuda" else 1e-4)
    # three streams in one call, where the backend batches: each as torch computes it
    if getattr(step, "max_batch", 3) >= 3:
        from engine.motion.cache import KVCache
        from engine.motion.model import Conditions

        mel, inputs = batch_inputs(step, 3)
        speech = step.encode(mel.to(step.device)).cpu()
        np.testing.assert_allclose(speech, reference.encode(mel), atol=1e-3)
        cond = Conditions(inputs["speech"], inputs["prosody"], inputs["stats"], torch.ones(3, dtype=torch.bool),
                          inputs["emotion"], inputs["ref"])
        cache = KVCache(*(inputs[n] for n in KVCache._fields))
        on = step.device
        clean, new = step(Conditions(*(c.to(on) for c in cond)), inputs["noise"].to(on), KVCache(*(c.to(on) for c in cache)))
        want_clean, want = reference(cond, inputs["noise"], cache)
        np.testing.assert_allclose(clean.cpu(), want_clean, atol=1e-3)
        for have, expected in zip(new, want, strict=True):
            np.testing.assert_allclose(have.cpu().double(), expected.double(), atol=1e-3)


def test_auto_is_onnxruntime_on_a_cpu_and_the_exported_backends_need_prepare(tiny_motion):
    assert backends.resolve("auto", "cpu") == "onnxruntime"
    if NO_TENSORRT:
        assert backends.resolve("auto", "cuda") == "torch"
    with pytest.raises(UserError, match="avatar export onnx"):
        backends.load("onnxruntime", tiny_motion, GUIDED)  # nothing here can export: only the CLI hands prepare
    assert type(backends.load("auto", tiny_motion, GUIDED)) is TorchStep  # so, without it, auto is torch
    with pytest.raises(UserError, match="unknown backend"):
        backends.check("tpu")
    with pytest.raises(UserError, match="runs on the CPU"):
        backends.check("onnxruntime", "cuda")


def test_a_torch_step_takes_any_sampler_and_shares_its_weights(tiny_motion):
    step = backends.load("torch", tiny_motion, GUIDED)
    other = step.with_sampler(SamplerOptions(steps=4))
    assert other.model is step.model and other.sampler.steps == 4 and step.with_sampler(GUIDED) is step
