"""ONNX export: every graph exports, passes onnx.checker and matches torch; a mismatch is a typed
error; the ONNX Runtime generator streams the same motion as torch."""

import json

import numpy as np
import pytest
import torch

from engine import assets, backends
from engine.audio.frontend import extract_features
from engine.audio.io import load_audio
from engine.backends.onnxruntime import OrtStep, ort_session
from engine.errors import UserError
from engine.motion.choice import Learned
from engine.motion.learned import LearnedDriver, LearnedOptions
from engine.motion.model import MotionConfig, MotionTransformer
from export.onnx import ExportMismatch, export_all, max_error
from export.runtime import prepare
from export.specs import generator_specs

pytestmark = pytest.mark.slow  # exports six graphs (~50 s on 2 cores)
OPTIONS = LearnedOptions(steps=2, guidance_audio=2.0, guidance_emotion=1.5)


@pytest.fixture(scope="module")
def exported(tiny_motion, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    return out, export_all(tiny_motion, out, OPTIONS.sampler(), size=128, progress=False)


def test_every_graph_exports_checks_and_matches_torch(exported):
    out, manifest = exported
    assert set(manifest["graphs"]) == {"speech", "embed", "denoise", "commit", "chunk", "renderer"}
    assert manifest["opset"] <= 22  # TensorRT rejects opset 23's Attention
    assert json.loads((out / "manifest.json").read_text()) == manifest
    for name, graph in manifest["graphs"].items():
        assert (out / graph["file"]).stat().st_size == graph["bytes"] > 0
        for kind in ("random", "real", "batch 3") if name in ("speech", "chunk") else ("random", "real"):
            assert max(graph["max_error"][kind].values()) <= graph["tolerance"]["atol"], (name, kind)


def test_a_graph_that_computes_something_else_is_refused(tiny_motion, exported):
    out, _ = exported
    torch.manual_seed(1)
    other = MotionTransformer(MotionConfig.tiny()).eval()  # same shapes, different weights
    spec = {s.name: s for s in generator_specs(other, OPTIONS.sampler())}["denoise"]
    with pytest.raises(ExportMismatch, match="graph denoise: output velocity is off by"):
        max_error(spec, ort_session(out / "denoise.onnx"), spec.dummy())


def test_the_onnxruntime_generator_streams_the_torch_motion(tiny_motion, exported, monkeypatch, tmp_path):
    out, _ = exported
    features = extract_features(load_audio(assets.SAMPLE_SPEECH)[:48000])
    torch_motion = LearnedDriver(backends.load("torch", tiny_motion, OPTIONS.sampler()), OPTIONS).drive(features)
    ort_motion = LearnedDriver(OrtStep(out), OPTIONS).drive(features)
    assert torch_motion.shape == ort_motion.shape
    np.testing.assert_allclose(ort_motion, torch_motion, atol=1e-4)
    # prepare exports on first use into its cache and reuses it after
    monkeypatch.setattr("export.runtime.CACHE_DIR", tmp_path)
    first = backends.load("onnxruntime", tiny_motion, OPTIONS.sampler(), prepare=prepare)
    assert (first.dir / "chunk.onnx").is_file() and backends.load(
        "onnxruntime", tiny_motion, OPTIONS.sampler(), prepare=prepare).dir == first.dir


def test_an_export_serves_only_the_sampler_it_was_made_for(exported):
    out, _ = exported
    driver = LearnedDriver(OrtStep(out), OPTIONS)
    with pytest.raises(UserError, match="needs its own export"):
        driver.set_options(LearnedOptions(steps=4))
    with pytest.raises(UserError, match="holds no exported generator"):
        OrtStep(out / "nowhere")


def test_render_on_onnxruntime_gives_the_torch_motion(tiny_motion, monkeypatch, tmp_path, sample_clip):
    from engine.offline import RenderRequest, render_file

    monkeypatch.setattr("export.runtime.CACHE_DIR", tmp_path / "cache")
    clip = sample_clip(2.0)
    motions = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        render_file(RenderRequest(audio=clip, out=out.with_suffix(".mp4"), size=128, prepare=prepare,
                                  driver=Learned(tiny_motion, backend, 2, 2.0, 1.5), motion_out=out.with_suffix(".npz")))
        motions[backend] = np.load(out.with_suffix(".npz"))["coeffs"]
    np.testing.assert_allclose(motions["onnxruntime"], motions["torch"], atol=1e-4)


def test_every_exported_graph_builds_into_a_tensorrt_engine(exported, tmp_path):
    """TensorRT(-RTX) parses and builds every graph on this CPU: no op it rejects, no plugins."""
    from engine.backends.tensorrt import TensorRTMissing
    from export.tensorrt import build_engines

    out, manifest = exported
    try:
        built = build_engines(out, tmp_path / "engines", progress=False)
    except TensorRTMissing as err:
        pytest.skip(str(err))
    assert set(built["graphs"]) == set(manifest["graphs"])
    for graph in built["graphs"].values():
        assert (tmp_path / "engines" / graph["engine"]).stat().st_size == graph["bytes"] > 0


NO_TENSORRT = __import__("engine.backends.tensorrt", fromlist=["runtime_unavailable"]).runtime_unavailable()


@pytest.mark.gpu
@pytest.mark.skipif(NO_TENSORRT is not None, reason=f"cannot run TensorRT engines here: {NO_TENSORRT}")
def test_the_tensorrt_generator_streams_the_torch_motion(tiny_motion, monkeypatch, tmp_path):
    monkeypatch.setattr("export.runtime.CACHE_DIR", tmp_path)
    features = extract_features(load_audio(assets.SAMPLE_SPEECH)[:48000])
    torch_motion = LearnedDriver(backends.load("torch", tiny_motion, OPTIONS.sampler()), OPTIONS).drive(features)
    trt = backends.load("tensorrt", tiny_motion, OPTIONS.sampler(), device="cuda", prepare=prepare)  # exports, builds
    assert (trt.dir / "tensorrt" / "chunk.engine").is_file()
    np.testing.assert_allclose(LearnedDriver(trt, OPTIONS).drive(features), torch_motion, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device here")
def test_render_on_cuda_gives_the_cpu_motion_and_frames(tiny_motion, tmp_path, sample_clip):
    from engine.io.video import read_frames
    from engine.offline import RenderRequest, render_file

    clip, out = sample_clip(2.0), {}
    for device in ("cpu", "cuda"):
        render_file(RenderRequest(audio=clip, out=tmp_path / f"{device}.mp4", size=128, device=device,
                                  driver=Learned(tiny_motion, "torch", 2, 2.0, 1.5), motion_out=tmp_path / f"{device}.npz"))
        out[device] = np.load(tmp_path / f"{device}.npz")["coeffs"], np.stack(list(read_frames(tmp_path / f"{device}.mp4")))
    np.testing.assert_allclose(out["cuda"][0], out["cpu"][0], atol=1e-3)
    assert np.abs(out["cuda"][1].astype(int) - out["cpu"][1]).mean() < 1.0  # through H.264, both
