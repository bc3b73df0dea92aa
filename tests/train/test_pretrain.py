import json

import numpy as np
import pytest
import torch

from engine.audio.frontend import extract_features
from engine.backends.eager import TorchStep
from engine.errors import UserError
from engine.io.checkpoint import load_model
from engine.motion import spec
from engine.motion.cache import KVCache
from engine.motion.generator import StreamingGenerator
from engine.motion.model import Conditions, MotionConfig, MotionTransformer
from train import pretrain as pt
from train.dataset import Corpus
from train.synth import corpus as synth

TINY = dict(batch=8, lr=3e-3, warmup=3, config="tiny", val_every=10, val_batches=2, save_every=5, seed=0)


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_batched_context_cache_equals_committing_chunk_by_chunk(data):
    """One batched commit of all context chunks gives the cache the streaming generator builds."""
    config = MotionConfig.tiny()
    torch.manual_seed(0)
    model = MotionTransformer(config).eval()
    b = Corpus(data, "train", config).sample_batch(np.random.default_rng(0), 64)
    L, n = config.chunk, config.context // config.chunk
    with torch.no_grad():
        batched = pt.context_cache(model, b)
        for i in [i for i in range(64) if b.start[i] >= config.context][:3] + [int(b.start.argmin())]:
            cache = KVCache.empty(config, 1)
            for j in range(n):
                if not b.context_valid[i, j * L]:
                    continue
                cond = Conditions(b.context_speech[i, j][None], b.context_prosody[i, j][None],
                                  b.context_stats[i, j][None], torch.ones(1, dtype=torch.bool),
                                  b.emotion[i : i + 1], b.ref[i : i + 1])
                cache = model.commit(b.context[i : i + 1, j * L : (j + 1) * L], cond, cache)
            # Only distances between slots matter; the batched cache numbers frames from the clip's start.
            assert torch.equal(cache.valid[0], batched.valid[i])
            assert torch.equal(cache.pos[0] - cache.pos[0, -1], batched.pos[i] - batched.pos[i, -1])
            assert batched.next_frame()[i, 0] == b.start[i]
            valid = batched.valid[i]
            assert torch.allclose(cache.keys[:, 0, :, valid], batched.keys[:, i, :, valid], atol=1e-6)
            assert torch.allclose(cache.values[:, 0, :, valid], batched.values[:, i, :, valid], atol=1e-6)


def test_lr_schedule_warms_up_then_decays():
    o = pt.PretrainOptions(steps=100, warmup=10, config="tiny")
    f = [pt.lr_factor(s, o) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] < 0.01


def test_tiny_model_learns(data, tmp_path):
    out = tmp_path / "run"
    pt.pretrain(data, out, pt.PretrainOptions(steps=30, **TINY), progress=False)
    losses = [r["loss"] for r in _log(out)]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.95 * np.mean(losses[:5])
    assert (out / "loss.png").stat().st_size > 0
    val = [r["val_loss"] for r in _log(out) if "val_loss" in r]
    assert len(val) == 3 and all(np.isfinite(val))


def test_resumed_run_equals_an_uninterrupted_one(data, tmp_path):
    """10 steps, then the same command with --steps 20: continues at step 11 and ends bit for bit where a
    20-step run ends (the cosine horizon is fixed by lr_decay_steps, so the schedule does not depend on
    where the run stopped)."""
    options = dict(TINY, lr_decay_steps=20)
    once, twice = tmp_path / "once", tmp_path / "twice"
    pt.pretrain(data, once, pt.PretrainOptions(steps=20, **options), progress=False)
    pt.pretrain(data, twice, pt.PretrainOptions(steps=10, **options), progress=False)
    assert torch.load(twice / "last.pt", weights_only=False)["step"] == 10
    with (twice / "log.jsonl").open("a") as log:  # a run killed after logging past its last save
        log.write(json.dumps({"step": 11, "loss": 9.0, "lr": 0.0}) + "\n")
    pt.pretrain(data, twice, pt.PretrainOptions(steps=20, **options), progress=False)

    assert [r["step"] for r in _log(twice)] == list(range(1, 21))
    assert [r["loss"] for r in _log(twice)] == [r["loss"] for r in _log(once)]
    a, b = (torch.load(d / "last.pt", weights_only=False) for d in (once, twice))
    for key in ("model", "ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)


def test_frozen_context_still_learns(data, tmp_path):
    pt.pretrain(data, tmp_path, pt.PretrainOptions(steps=30, context_grad=False, **TINY), progress=False)
    losses = [r["loss"] for r in _log(tmp_path)]
    assert np.mean(losses[-5:]) < 0.95 * np.mean(losses[:5])


def test_resume_with_other_options_is_refused(data, tmp_path):
    pt.pretrain(data, tmp_path, pt.PretrainOptions(steps=2, **TINY), progress=False)
    with pytest.raises(UserError, match="different options"):
        pt.pretrain(data, tmp_path, pt.PretrainOptions(steps=4, **dict(TINY, lr=1e-4)), progress=False)


def test_written_weights_drive_the_streaming_generator(data, tmp_path):
    assert pt.main(["--data", str(data), "--out", str(tmp_path), "--steps", "3", "--batch", "4",
                    "--config", "tiny", "--seed", "1", "--no-progress"]) == 0
    model, config, provenance = load_model(tmp_path / "motion.safetensors", MotionTransformer, MotionConfig)
    assert config == MotionConfig.tiny() and provenance["steps"] == 3 and provenance["seed"] == 1
    assert provenance["data"].endswith("manifest.json") and len(provenance["data_sha256"]) == 64
    assert np.isfinite(provenance["train_loss"]) and np.isfinite(provenance["val_loss"])
    clip = synth.load_shard(data / "shard_00000.npz")[0]
    feats = extract_features(clip["audio"])[: config.chunk + config.lookahead]
    motion = StreamingGenerator(TorchStep(model)).step(feats, emotion="happy")
    assert motion.shape == (config.chunk, spec.D) and np.isfinite(motion).all()


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as exit_:
        pt.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--data" in text and "last.pt" in text and "avatar data synth" in text


@pytest.mark.slow
def test_smoke_synth_train_render(data, tmp_path, sample_clip, capsys):
    """The whole learned path as CI can afford it: 30 s corpus -> a few tiny steps -> avatar render with it."""
    from engine.cli import main as avatar
    from engine.io.video import probe

    assert pt.main(["--data", str(data), "--out", str(tmp_path / "ckpt"), "--steps", "4", "--batch", "4",
                    "--config", "tiny", "--no-progress"]) == 0
    out = tmp_path / "talk.mp4"
    assert avatar(["render", "--audio", str(sample_clip(1.5)), "--checkpoint", str(tmp_path / "ckpt/motion.safetensors"),
                   "--out", str(out), "--size", "256", "--motion-out", str(tmp_path / "m.npz")]) == 0
    assert "wrote" in capsys.readouterr().out
    info = probe(out)
    motion = spec.load(tmp_path / "m.npz")
    assert info.frames == len(motion) == round(1.5 * 25) and np.isfinite(motion).all()
