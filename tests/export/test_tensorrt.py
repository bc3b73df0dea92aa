"""TensorRT engines from small ONNX graphs exported here: builds run on CPU (TensorRT-RTX), running them needs a GPU."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.backends import tensorrt as trt_runtime
from engine.backends.tensorrt import TensorRTMissing
from engine.io import sha256_file
from export import tensorrt as trt_export
from export.tensorrt import (
    EngineBuildError,
    OnnxDirError,
    OnnxParseError,
    TensorRTBuildError,
    build_engines,
    main,
)

try:
    TRT = trt_runtime.load_tensorrt()
except TensorRTMissing as err:
    TRT, MISSING = None, str(err)
needs_trt = pytest.mark.skipif(TRT is None, reason=f"TensorRT(-RTX) not importable: {TRT is None and MISSING}")


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, x):  # (2, 16) -> (2, 16): chains into itself on device
        return self.l2(torch.relu(self.l1(x)))


class Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(8, 12, kernel_size=3, padding=1)

    def forward(self, x):  # (1, 8, 32) -> (1, 12, 32)
        return F.gelu(self.conv(x))


class CachedAttention(nn.Module):
    """One attention block over a fixed window of past keys/values plus the new tokens, cache in and out."""

    def __init__(self, d=32, heads=4):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x, keys, values, valid):
        B, T, d = x.shape
        q, k, v = (t.view(B, T, self.heads, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))  # (B, h, T, hd)
        k_all, v_all = torch.cat([keys, k], 2), torch.cat([values, v], 2)  # (B, h, W + T, hd)
        mask = torch.cat([valid, torch.ones(B, T, dtype=torch.bool)], 1)[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
        y = self.proj(y.transpose(1, 2).reshape(B, T, d))
        W = keys.shape[2]
        return y, k_all[:, :, -W:], v_all[:, :, -W:]  # new cache: the oldest T slots pushed out


GRAPHS = {  # name: (module, inputs)
    "mlp": (MLP, {"x": torch.randn(2, 16)}),
    "conv": (Conv, {"x": torch.randn(1, 8, 32)}),
    "attention": (CachedAttention, {"x": torch.randn(1, 4, 32), "keys": torch.randn(1, 4, 12, 8),
                                    "values": torch.randn(1, 4, 12, 8), "valid": torch.ones(1, 12, dtype=torch.bool)}),
}
OUTPUTS = {"mlp": ["y"], "conv": ["y"], "attention": ["y", "new_keys", "new_values"]}


def export(module: nn.Module, inputs: dict, outputs: list[str], path, opset: int = 18, dynamic_axes=None) -> dict:
    torch.onnx.export(module.eval(), tuple(inputs.values()), str(path), input_names=list(inputs),
                      output_names=outputs, opset_version=opset, dynamo=False, dynamic_axes=dynamic_axes)
    return {"file": path.name, "inputs": {n: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                                          for n, t in inputs.items()}, "outputs": outputs}


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("onnx")
    graphs = {name: export(make(), inputs, OUTPUTS[name], out / f"{name}.onnx") for name, (make, inputs) in GRAPHS.items()}
    (out / "manifest.json").write_text(json.dumps({"opset": 18, "graphs": graphs}))
    return out


@pytest.fixture(scope="module")
def built(onnx_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("engines")
    return out, build_engines(onnx_dir, out, progress=False)


def unsupported_graph(path, domain: str = "com.example") -> None:
    """Relu then a custom-domain op no TensorRT knows (and no plugin provides)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu0"),
             helper.make_node("Frobnicate", ["a"], ["y"], name="frob1", domain=domain)]
    graph = helper.make_graph(nodes, "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(domain, 1)]),
              str(path))


# ----------------------------------------------------------------------------------------- errors


def test_missing_dir_says_how_to_make_it(tmp_path):
    with pytest.raises(OnnxDirError, match="avatar export onnx --out"):
        build_engines(tmp_path / "nope", tmp_path / "out", progress=False)


def test_empty_dir(tmp_path):
    with pytest.raises(OnnxDirError, match="no manifest.json and no .onnx files"):
        build_engines(tmp_path, tmp_path / "out", progress=False)


def test_manifest_naming_missing_files(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"opset": 18, "graphs": {"mlp": {"file": "mlp.onnx"}}}))
    with pytest.raises(OnnxDirError, match="missing: .*mlp.onnx"):
        build_engines(tmp_path, tmp_path / "out", progress=False)


def test_broken_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(OnnxDirError, match="not an export manifest"):
        build_engines(tmp_path, tmp_path / "out", progress=False)


def test_library_missing_says_how_to_install(tmp_path, monkeypatch):
    (tmp_path / "g.onnx").write_bytes(b"")
    monkeypatch.setattr(trt_runtime, "LIBRARIES", ("no_such_tensorrt_module",))
    with pytest.raises(TensorRTMissing, match=r"pip install \"\.\[tensorrt\]\""):
        build_engines(tmp_path, tmp_path / "out", progress=False)


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    assert main(["--onnx", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 1
    assert "avatar export tensorrt: error: ONNX directory" in capsys.readouterr().err


def test_cli_help_has_an_example(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--help"])
    assert exit.value.code == 0
    assert "avatar export tensorrt --onnx out/onnx --out out/trt" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ build


@needs_trt
def test_builds_every_graph_with_a_manifest(built, onnx_dir):
    out, manifest = built
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["library"] == TRT.__name__ and manifest["version"] == TRT.__version__
    assert manifest["fp16"] is False and manifest["precision"] == "fp32" and manifest["opset"] == 18
    assert set(manifest["graphs"]) == set(GRAPHS)
    for name, entry in manifest["graphs"].items():
        engine = out / entry["engine"]
        assert engine.name == f"{name}.engine" and engine.stat().st_size == entry["bytes"] > 0
        assert entry["sha256"] == sha256_file(engine)
        assert entry["onnx_sha256"] == sha256_file(onnx_dir / f"{name}.onnx")
        assert entry["build_seconds"] > 0
    attention = manifest["graphs"]["attention"]
    assert attention["inputs"] == {"x": {"shape": [1, 4, 32], "dtype": "float32"},
                                   "keys": {"shape": [1, 4, 12, 8], "dtype": "float32"},
                                   "values": {"shape": [1, 4, 12, 8], "dtype": "float32"},
                                   "valid": {"shape": [1, 12], "dtype": "bool"}}
    assert attention["outputs"]["new_keys"] == {"shape": [1, 4, 12, 8], "dtype": "float32"}
    assert manifest["graphs"]["conv"]["outputs"] == {"y": {"shape": [1, 12, 32], "dtype": "float32"}}
    if trt_runtime._is_rtx(TRT):  # timing caches are no-ops there
        assert manifest["timing_cache"] is None
    else:
        assert (out / "timing.cache").stat().st_size > 0


@needs_trt
def test_without_manifest_builds_every_onnx_file(onnx_dir, tmp_path, capsys):
    src = tmp_path / "onnx"
    src.mkdir()
    shutil.copy(onnx_dir / "mlp.onnx", src)
    shutil.copy(onnx_dir / "conv.onnx", src / "conv2.onnx")
    assert main(["--onnx", str(src), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr()
    assert "mlp: mlp.engine" in printed.err and "built 2 engines" in printed.out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sorted(manifest["graphs"]) == ["conv2", "mlp"] and manifest["opset"] is None


@needs_trt
def test_dynamic_axes_take_the_manifest_shape(tmp_path):
    entry = export(MLP(), {"x": torch.randn(2, 16)}, ["y"], tmp_path / "mlp.onnx", dynamic_axes={"x": {0: "batch"}})
    entry["inputs"]["x"]["shape"] = [3, 16]
    (tmp_path / "manifest.json").write_text(json.dumps({"opset": 18, "graphs": {"mlp": entry}}))
    manifest = build_engines(tmp_path, tmp_path / "out", progress=False)
    assert manifest["graphs"]["mlp"]["inputs"]["x"]["shape"] == [3, 16]

    (tmp_path / "manifest.json").unlink()  # no manifest: nothing says which batch to build
    with pytest.raises(TensorRTBuildError, match="input x has dynamic dimensions"):
        build_engines(tmp_path, tmp_path / "out", progress=False)


@needs_trt
def test_fp16(onnx_dir, tmp_path):
    src = tmp_path / "onnx"
    src.mkdir()
    shutil.copy(onnx_dir / "attention.onnx", src)
    manifest = build_engines(src, tmp_path / "out", fp16=True, progress=False)
    assert manifest["fp16"] is True and manifest["precision"].startswith("fp16")
    attention = manifest["graphs"]["attention"]
    assert attention["inputs"]["x"]["dtype"] == attention["outputs"]["y"]["dtype"] == "float32"  # I/O as exported
    assert (tmp_path / "out" / "attention.engine").stat().st_size > 0


class PositionalMLP(nn.Module):
    """Activations plus an embedding of integer positions: the shape of the generator's time/position maths."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.register_buffer("freq", torch.exp(-torch.arange(8) * 0.5))

    def forward(self, x, pos):  # (2, 16) float, (2,) int64 -> (2, 16)
        angle = pos.float()[:, None] * self.freq  # float32 keeps positions past 2048 exact
        emb = torch.cat([angle.sin(), angle.cos()], -1)  # (2, 16)
        return self.l2(torch.relu(self.l1(x + emb)))


def test_onnx_to_fp16_keeps_integer_maths_in_fp32(tmp_path):
    import onnx
    import onnxruntime as ort

    inputs = {"x": torch.randn(2, 16), "pos": torch.tensor([3, 60_000])}  # 60000 in float16: steps of 32
    export(PositionalMLP(), inputs, ["y"], tmp_path / "pos.onnx")
    model = onnx.load(str(tmp_path / "pos.onnx"))
    half = trt_export.onnx_to_fp16(model)
    types = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(half).graph.value_info}
    by_op = {n.op_type: n for n in half.graph.node}
    assert types[by_op["Sin"].output[0]] == onnx.TensorProto.FLOAT  # integer-derived: float32
    assert types[by_op["Relu"].output[0]] == onnx.TensorProto.FLOAT16  # activations: float16
    assert [i.type.tensor_type.elem_type for i in (*half.graph.input, *half.graph.output)] == [
        onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.FLOAT]  # I/O as exported
    feed = {n: t.numpy() for n, t in inputs.items()}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_allclose(got, want, atol=1e-2, rtol=1e-2)


@needs_trt
def test_custom_op_is_a_parse_error_naming_the_node(onnx_dir, tmp_path):
    src = tmp_path / "onnx"
    src.mkdir()
    shutil.copy(onnx_dir / "mlp.onnx", src)
    unsupported_graph(src / "zbad.onnx")  # built after mlp
    with pytest.raises(OnnxParseError) as caught:
        build_engines(src, tmp_path / "out", progress=False)
    err = caught.value
    assert err.graph == "zbad" and "graph zbad" in str(err)
    assert [(i.node, i.node_name, i.operator) for i in err.issues] == [(1, "frob1", "Frobnicate")]
    assert "'frob1' (Frobnicate)" in str(err)
    assert (tmp_path / "out" / "mlp.engine").exists() and not (tmp_path / "out" / "manifest.json").exists()


@needs_trt
def test_opset23_attention_is_refused(tmp_path):
    """Opset 23's Attention op (what torch emits for SDPA at opset >= 23): why the export stays at opset <= 22."""
    import onnx
    from onnx import TensorProto, helper

    shape = [1, 2, 8, 16]
    graph = helper.make_graph([helper.make_node("Attention", ["q", "k", "v"], ["y"], name="attn0")], "attn",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in "qkv"],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]), str(tmp_path / "attn.onnx"))
    with pytest.raises((OnnxParseError, EngineBuildError), match="Attention") as caught:
        build_engines(tmp_path, tmp_path / "out", progress=False)
    assert caught.value.graph == "attn"


# -------------------------------------------------------------------------------------------- gpu


NO_RUNTIME = trt_runtime.runtime_unavailable()


@needs_trt
@pytest.mark.skipif(NO_RUNTIME is None, reason="this machine can run engines")
def test_running_without_a_gpu_says_why(built):
    out, _ = built
    with pytest.raises((trt_runtime.EngineLoadError, TensorRTMissing), match="cannot run|cuda-python"):
        trt_runtime.TensorRTGraph(out / "mlp.engine")


@pytest.mark.gpu
@pytest.mark.skipif(NO_RUNTIME is not None, reason=f"cannot run TensorRT engines here: {NO_RUNTIME}")
def test_engines_match_onnxruntime_and_chain_on_device(built, onnx_dir, rng):
    import onnxruntime as ort

    out, manifest = built
    for name, (_, example) in GRAPHS.items():
        inputs = {n: (rng.standard_normal(t.shape).astype(np.float32) if t.dtype == torch.float32 else t.numpy())
                  for n, t in example.items()}
        session = ort.InferenceSession(str(onnx_dir / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        want = dict(zip(OUTPUTS[name], session.run(OUTPUTS[name], inputs), strict=True))
        with trt_runtime.TensorRTGraph(out / manifest["graphs"][name]["engine"]) as graph:
            got = graph.run(inputs)
        for output in OUTPUTS[name]:
            np.testing.assert_allclose(got[output], want[output], atol=1e-3, rtol=1e-3, err_msg=f"{name}.{output}")

    x = rng.standard_normal((2, 16)).astype(np.float32)
    session = ort.InferenceSession(str(onnx_dir / "mlp.onnx"), providers=["CPUExecutionProvider"])
    want = session.run(["y"], {"x": session.run(["y"], {"x": x})[0]})[0]
    with trt_runtime.TensorRTGraph(out / "mlp.engine") as first, \
            trt_runtime.TensorRTGraph(out / "mlp.engine", stream=first.stream) as second:
        first.run({"x": x})  # x now sits in first's input buffer
        second.run_device({"x": first.run_device()["y"]})  # mlp(mlp(x)) without leaving the device
        got = second.download("y")
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-3)
