"""benchmarks/generator_bench.py: a tiny smoke run has every table and row; the no-cache baseline is exact.

Structure only: timings here mean nothing (tiny network, shared CI cores), so nothing asserts on speed.
"""

import itertools
import json

import numpy as np
import torch

from benchmarks import generator_bench as bench
from engine.audio.frontend import AudioFeatures
from engine.backends.eager import TorchStep
from engine.motion.generator import StreamingGenerator
from engine.motion.model import MotionConfig, MotionTransformer
from engine.timebase import FPS, MELS_PER_FRAME, N_MELS


def test_quick_tiny_run_writes_every_row(tmp_path):
    out = tmp_path / "gb"
    threads = torch.get_num_threads()
    try:  # 1 thread: tiny tensors gain nothing from 2, and shared CI cores make 2 spin
        result = bench.main(["--quick", "--tiny", "--repeats", "1", "--minutes", "0.05", "--out", str(out),
                             "--threads", "1"])
    finally:
        torch.set_num_threads(threads)

    assert json.loads(out.with_suffix(".json").read_text()) == json.loads(json.dumps(result))
    cells = {(r["chunk"], r["steps"], r["guidance"]) for r in result["grid"]}
    assert cells == set(itertools.product(bench.QUICK.chunks, bench.QUICK.steps, ("off", "on")))
    for r in result["grid"]:
        assert r["ms_per_chunk"]["median"] > 0 and r["frames_per_s"]["median"] > 0
        assert r["ms_per_chunk"]["min"] <= r["ms_per_chunk"]["median"] <= r["ms_per_chunk"]["max"]
        assert r["latency_floor_ms"] == (r["chunk"] + r["lookahead"]) * 1000 / FPS < r["latency_ms"]
        assert r["frontend_ms_per_chunk"] > 0

    stream = result["stream"]
    assert stream["frames"] == 72 and 1 < len(stream["bins"]) <= 10  # 3 s in L = 4 chunks
    assert sum(b["chunks"] for b in stream["bins"]) == stream["frames"] // stream["chunk"]
    for b in [*stream["bins"], stream["cache_filling"], stream["overall"]]:
        assert b["cached_ms"]["median"] > 0 and b["no_cache_ms"]["median"] > 0
    assert stream["max_abs_motion_diff"] < 1e-5  # the baseline recomputes exactly what the cache holds
    assert isinstance(result["target"]["met"], bool) and result["target"]["x_realtime"] > 0

    md = out.with_suffix(".md").read_text()
    assert f"`{result['command']}`" in md and result["command"].startswith("python benchmarks/generator_bench.py")
    assert "--quick --tiny" in md and "random init" in md
    assert md.count("\n| ") == len(result["grid"]) + len(stream["bins"]) + 4  # 2 headers, filling, whole stream


def random_features(rng, frames: int) -> AudioFeatures:
    uniform = rng.uniform(0, 1, (4, frames)).astype(np.float32)
    mel = rng.normal(size=(frames, MELS_PER_FRAME, N_MELS)).astype(np.float32)
    return AudioFeatures(mel, -60 + 50 * uniform[0], 100 + 150 * uniform[1], uniform[2], uniform[3])


@torch.no_grad()
def test_recomputed_cache_equals_the_streaming_cache(rng):
    torch.manual_seed(0)
    model = MotionTransformer(MotionConfig.tiny()).eval()
    cfg = model.config
    features = random_features(rng, 10 * cfg.chunk + cfg.lookahead)
    cached, uncached = StreamingGenerator(TorchStep(model, bench.SHIPPED)), bench.RecomputingGenerator(model)
    for f in bench.chunk_features(features, cfg, 0, 10):  # past the window: the ring has wrapped
        cached.step(f, bench.EMOTION)
        uncached.step(f)
        rebuilt = bench.recompute_cache(model, uncached.window, uncached.next_frame)
        assert torch.equal(rebuilt.valid, cached.cache.valid) and torch.equal(rebuilt.pos, cached.cache.pos)
        assert torch.allclose(rebuilt.keys, cached.cache.keys, atol=1e-5)
        assert torch.allclose(rebuilt.values, cached.cache.values, atol=1e-5)


def test_long_streams_bin_by_minute():
    bins = bench.stream_bins(10 * 60 * FPS)
    assert [label for _, _, label in bins] == [f"{m}–{m + 1} min" for m in range(10)]
    assert bins[0][:2] == (0, 60 * FPS) and bins[-1][1] == 10 * 60 * FPS
    short = bench.stream_bins(100)
    assert len(short) == 10 and short[-1][1] == 100
