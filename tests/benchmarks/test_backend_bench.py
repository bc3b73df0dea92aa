"""benchmarks/backend_bench.py: a small run writes every table; ONNX Runtime computes the same motion and
frames as torch (a correctness check); the timing helpers and the export reuse behave.

Structure only: timings mean nothing on shared CI cores, so nothing asserts on speed (the 2x target may
be met or missed).
"""

import json
import math
from dataclasses import asdict
from types import SimpleNamespace

import pytest
import torch

from benchmarks import backend_bench as bench
from engine import assets
from engine.errors import UserError
from engine.io import sha256_file
from engine.motion.generator import silence


@pytest.mark.slow  # exports every graph (~15 s at 128 px) and runs the clip on each backend
def test_small_run_writes_every_table_and_backends_agree(tmp_path):
    out = tmp_path / "bb"
    threads = torch.get_num_threads()
    try:
        result = bench.main(["--size", "128", "--repeats", "2", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)

    assert json.loads(out.with_suffix(".json").read_text()) == json.loads(json.dumps(result))
    assert result["renderer_px"] == 128 and result["machine"]["threads"] == 1
    cfg, clip = result["config"], result["clip"]
    assert clip["chunks"] == math.ceil(clip["frames"] / cfg["chunk"]) and clip["frames"] > 200  # the ~9 s sample

    gpu = result["machine"]["gpu"]
    ran = [name for name in ("torch CUDA graph", "TensorRT") if gpu[name] == "run"]  # none without a GPU
    rows = ["torch eager", "onnxruntime", "ORT everything", *ran]
    assert list(result["end_to_end"]) == rows
    for name, row in result["end_to_end"].items():
        fps = row["frames_per_s"]
        assert 0 < fps["min"] <= fps["median"] <= fps["max"] and 0 < row["frames_per_s_with_frontend"] < fps["median"]
        lat = row["chunk_latency_ms"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["max"]
        diff = row["max_abs_diff"]
        # correctness: the exported graphs give torch's motion and frames (uint8 levels: remap's 1/32 px
        # sample positions against the float graph rounded, a few levels at sharp edges, ~0 on average)
        assert diff["motion"] < 1e-4 and diff["frames"] <= 8 and diff["frames_mean"] < 0.25, name
    assert result["end_to_end"]["torch eager"]["max_abs_diff"] == {"motion": 0.0, "frames": 0, "frames_mean": 0.0}
    assert result["end_to_end"]["torch eager"]["vs_torch_eager"] == 1.0
    ort, eager = result["end_to_end"]["onnxruntime"], result["end_to_end"]["torch eager"]  # paired pass by pass
    paired = [a / b for a, b in zip(ort["frames_per_s_passes"], eager["frames_per_s_passes"])]
    assert ort["vs_torch_eager_passes"] == pytest.approx(paired) and len(paired) == result["repeats"]
    assert min(paired) <= ort["vs_torch_eager"] <= max(paired)
    t = result["target"]
    assert t["ratio"] == result["end_to_end"]["onnxruntime"]["vs_torch_eager"] > 0 and isinstance(t["met"], bool)
    if not gpu["cuda"]:
        assert gpu["torch CUDA graph"] == gpu["TensorRT"] == bench.NO_CUDA

    stages = result["stages"]
    L = cfg["chunk"]
    assert list(stages) == ["audio frontend", "generator", "renderer, 1 a call", f"renderer, {L} a call"]
    assert stages["generator"]["frames_per_call"] == L and stages[f"renderer, {L} a call"]["frames_per_call"] == L
    for name, st in stages.items():
        backends = ["any"] if name == "audio frontend" else ["torch", "onnxruntime", *(bench.PIPELINES[r][0] for r in ran)]
        assert list(st["ms_per_call"]) == backends and all(st["frames_per_s"][b] > 0 for b in backends)
    assert list(result["graphs"]) == ["speech", "embed", "denoise", "commit", "chunk"]
    assert all(ms[b]["median"] > 0 for ms in result["graphs"].values() for b in ("torch", "onnxruntime"))

    md = out.with_suffix(".md").read_text()
    assert f"`{result['command']}`" in md and result["command"].startswith("python benchmarks/backend_bench.py")
    assert ("**met**" in md) == t["met"] and "load average" in md
    not_run = 2 - len(ran)  # rows saying why torch CUDA or TensorRT did not run
    assert md.count("\n| ") == 3 + len(rows) + not_run + len(stages) - 1 + len(result["graphs"])
    assert md.count(bench.NO_CUDA) == (0 if gpu["cuda"] else 2)


def test_interleaved_times_every_call_after_a_warm_up_pass():
    seen = []
    ms = bench.interleaved({"a": lambda x: seen.append(("a", x)), "b": lambda x: seen.append(("b", x))}, [1, 2], 3)
    assert seen == [(n, x) for _ in range(4) for n in "ab" for x in (1, 2)]  # turns pass by pass, same inputs
    assert set(ms) == {"a", "b"} and ms["a"]["runs"] == 3 and ms["a"]["min"] <= ms["a"]["median"] <= ms["a"]["max"]


def test_clip_windows_cover_the_clip_with_lookahead_like_drive():
    features = silence(9)
    windows = bench.clip_windows(features, chunk=2, lookahead=1)
    assert len(windows) == 5 and all(len(w) == 3 for w in windows)  # 9 frames -> 5 chunks of 2, padded


def test_reusing_an_export_of_other_weights_says_what_to_do(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"checkpoint_sha256": "0" * 64, "sampler": {},
                                                        "renderer_size": 128}))
    with pytest.raises(UserError, match="pass an empty --onnx directory"):
        bench.exported(tmp_path, assets.FAST_MOTION, SimpleNamespace(size=128), chunk=2)


def test_an_export_traced_from_other_graph_code_is_not_reused(tmp_path):
    """Same weights, sampler and size, but the model code changed since: the old graphs would time old code."""
    manifest = {"checkpoint_sha256": sha256_file(assets.FAST_MOTION), "graph_code_sha256": "0" * 64,
                "sampler": asdict(bench.learned(assets.FAST_MOTION).sampler()), "renderer_size": 128}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="graph code"):
        bench.exported(tmp_path, assets.FAST_MOTION, SimpleNamespace(size=128), chunk=2)
