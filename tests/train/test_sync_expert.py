import json

import numpy as np
import pytest
import torch

from engine import assets
from engine.audio.frontend import AudioFeatures, extract_features
from engine.backends.eager import TorchStep
from engine.errors import UserError
from engine.io.checkpoint import read_metadata, save_checkpoint
from engine.motion import spec
from engine.motion.generator import StreamingGenerator, silence
from engine.motion.model import MotionConfig, MotionTransformer
from engine.motion.sampler import SamplerOptions
from train import sync_expert as sx
from train.dataset import load_clips

TINY = dict(batch=16, lr=3e-3, warmup=3, config="tiny", val_every=10, val_batches=2, save_every=5, seed=0)


@pytest.fixture(scope="session")
def trained(data, tmp_path_factory):
    """A tiny expert trained briefly (~5 s): enough to find shifts in a held-out voice's clip."""
    out = tmp_path_factory.mktemp("sync_trained")
    options = sx.SyncOptions(steps=250, batch=32, config="tiny", val_every=250, save_every=250)
    return sx.load_expert(sx.train_sync(data, out, options, progress=False))


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("bad, match", [
    (dict(steps=0), "steps must be >= 1"),
    (dict(min_negative_offset=0), "min_negative_offset must be >= 1"),
    (dict(min_negative_offset=16), "must be <= max_offset"),
    (dict(max_offset=5, min_negative_offset=2), "largest validation shift"),
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(config="huge"), "config must be one of"),
    (dict(lr_decay_steps=0), "lr_decay_steps >= 1"),
])
def test_options_are_verified(bad, match):
    with pytest.raises(UserError, match=match):
        sx.SyncOptions(**bad)


def test_config_round_trips_and_the_default_is_small():
    config = sx.SyncConfig()
    assert sx.SyncConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown SyncConfig fields"):
        sx.SyncConfig.from_dict(dict(config.to_dict(), chunk=4))
    with pytest.raises(ValueError, match="odd"):
        sx.SyncConfig(window=4)
    log_mel = {k: v for k, v in config.to_dict().items() if not k.startswith("speech")}
    log_mel |= {"n_mels": 80, "mels_per_frame": 4}
    with pytest.raises(ValueError, match="reads log-mel.*retrain"):  # the expert shipped before issue 12
        sx.SyncConfig.from_dict(log_mel)
    with pytest.raises(ValueError, match="speech encoder gives 384 x 2"):
        sx.SyncConfig(speech_dim=80)
    assert config.mouth_dim == len(sx.MOUTH) and all(n.startswith(("jaw", "mouth")) for n in sx.MOUTH)
    assert "jawOpen" in sx.MOUTH and "eyeBlink_L" not in sx.MOUTH and "headYaw" not in sx.MOUTH
    size = sum(p.numel() * p.element_size() for p in sx.SyncExpert(config).parameters())
    assert size < 2 * 2**20


def test_sync_curve_sign_convention():
    """Motion that repeats the audio k frames later LAGS it: the offset is +k."""
    rng = np.random.default_rng(0)
    audio = rng.normal(size=(60, 8)).astype(np.float32)
    audio /= np.linalg.norm(audio, axis=1, keepdims=True)
    speech = np.ones(60, bool)
    for k in (-4, 0, 3, 7):
        motion = audio[np.clip(np.arange(60) - k, 0, 59)]  # motion[c + k] = audio[c]
        assert np.array_equal(sx.shift_motion(audio, k), motion)
        r = sx.sync_curve(audio, motion, speech, max_offset=10)
        assert r.offset_frames == k and r.offset_ms == 40 * k
        assert r.curve[r.offsets == k][0] == pytest.approx(1.0) and r.confidence > 0.5
        assert r.speech_windows == 60 and len(r.curve) == 21


def test_silence_is_no_speech():
    expert = sx.SyncExpert(sx.SyncConfig.tiny())
    features = extract_features(np.zeros(16000, np.float32))  # 1 s of digital silence
    r = sx.sync_offsets(expert, features, spec.neutral(len(features)))
    assert not r.has_speech and r.speech_windows == 0
    assert r.offset_frames == 0 and r.offset_ms == 0 and r.confidence == 0.0
    assert r.curve.shape == (31,) and np.isnan(r.curve).all()


def test_inputs_are_checked():
    expert = sx.SyncExpert(sx.SyncConfig.tiny())
    features = extract_features(np.zeros(8000, np.float32))
    with pytest.raises(ValueError, match=f"motion must be \\(13, {spec.D}\\).* got \\(12, {spec.D}\\)"):
        sx.sync_offsets(expert, features, spec.neutral(12))
    with pytest.raises(ValueError, match=f"motion must be \\(13, {spec.D}\\).* got \\(13, 10\\)"):
        sx.sync_offsets(expert, features, np.zeros((13, 10), np.float32))
    with pytest.raises(ValueError, match="speech track must be \\(13, 2, 384\\).* got \\(12, 2, 384\\)"):
        sx.audio_embeddings(expert, features, np.zeros((12, 2, 384), np.float16))


def test_speech_track_is_what_the_streaming_generator_hears(data):
    """Offline == live: each frame's tokens are those the streaming generator's encoder gives the chunk holding
    it (MotionConfig.tiny has the tiny expert's speech layout, with another audio_past, which changes no token)."""
    config = sx.SyncConfig.tiny()
    features = load_clips(data, "val")[0].features[:30]
    track = sx.speech_track(config, features)
    assert track.shape == (30, 2, 384) and track.dtype == np.float16

    model_config = MotionConfig.tiny()
    assert model_config.audio_past != config.layout().audio_past
    generator = StreamingGenerator(TorchStep(MotionTransformer(model_config), SamplerOptions(steps=1)))
    L, K, P = model_config.chunk, model_config.lookahead, model_config.audio_past
    stream = AudioFeatures.concat([features, silence(L + K)])
    live = []
    for start in range(0, len(features), L):
        chunk = stream[start : start + L + K]
        live.append(generator.conditions(chunk).speech[0, P : P + L].numpy())
        generator.step(chunk)
    np.testing.assert_allclose(track.astype(np.float32), np.concatenate(live)[:30], atol=1e-2, rtol=1e-2)


def test_batches_hold_the_windows_around_speech_frames(data):
    config, R = sx.SyncConfig.tiny(), 15
    clips, tracks = sx.clip_tracks(data, "train", config)
    assert all(c.speech is None for c in clips)  # the chunk tables are dropped once the tracks are cut
    np.testing.assert_array_equal(tracks[0], sx.speech_track(config, clips[0].features))  # the cache's = computed
    h = config.half
    b = sx.SyncWindows(clips, tracks, config, R).sample(np.random.default_rng(0), 200)
    assert b.speech.shape == (200, config.window, 2, 384) and b.mouth.shape == (200, 2 * R + 1, config.window, 24)
    for i in range(200):
        clip, f = clips[int(b.clip[i])], int(b.frame[i])
        assert clip.features.vad[f] > sx.SPEECH_VAD
        centres = f + np.arange(-R, R + 1)
        assert np.array_equal(b.valid[i].numpy(), (centres >= 0) & (centres < len(clip.motion)))
        mouth = sx.mouth_track(clip.motion)
        for k in np.flatnonzero((centres - h >= 0) & (centres + h < len(clip.motion))):
            assert np.array_equal(b.mouth[i, k].numpy(), mouth[centres[k] - h : centres[k] + h + 1])
        if h <= f < len(clip.motion) - h:
            assert np.array_equal(b.speech[i].numpy(), tracks[int(b.clip[i])][f - h : f + h + 1].astype(np.float32))


def test_tiny_expert_learns(data, tmp_path):
    # 100 steps: the tiny audio encoder's first ~40 steps on 384-wide speech tokens barely move the loss
    sx.train_sync(data, tmp_path, sx.SyncOptions(steps=100, **dict(TINY, batch=32, val_every=25)), progress=False)
    records = _log(tmp_path)
    losses = [r["loss"] for r in records]
    assert len(losses) == 100 and np.mean(losses[-10:]) < 0.95 * np.mean(losses[:10])
    val = [r for r in records if "val_loss" in r]
    assert len(val) == 4 and all(np.isfinite(r["val_loss"]) and 0 <= r["val_accuracy"] <= 1 for r in val)
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_resumed_run_equals_an_uninterrupted_one(data, tmp_path):
    options = dict(TINY, lr_decay_steps=20)
    once, twice = tmp_path / "once", tmp_path / "twice"
    sx.train_sync(data, once, sx.SyncOptions(steps=20, **options), progress=False)
    sx.train_sync(data, twice, sx.SyncOptions(steps=10, **options), progress=False)
    assert torch.load(twice / "last.pt", weights_only=False)["step"] == 10
    with (twice / "log.jsonl").open("a") as log:  # a run killed after logging past its last save
        log.write(json.dumps({"step": 11, "loss": 9.0, "lr": 0.0}) + "\n")
    sx.train_sync(data, twice, sx.SyncOptions(steps=20, **options), progress=False)

    assert [r["step"] for r in _log(twice)] == list(range(1, 21))
    assert [r["loss"] for r in _log(twice)] == [r["loss"] for r in _log(once)]
    a, b = (torch.load(d / "last.pt", weights_only=False)["model"] for d in (once, twice))
    assert all(torch.equal(value, b[name]) for name, value in a.items())


def test_resume_with_other_options_is_refused(data, tmp_path):
    sx.train_sync(data, tmp_path, sx.SyncOptions(steps=2, **TINY), progress=False)
    with pytest.raises(UserError, match="different options"):
        sx.train_sync(data, tmp_path, sx.SyncOptions(steps=4, **dict(TINY, temperature=0.5)), progress=False)


def test_written_checkpoint_loads(data, tmp_path):
    assert sx.main(["--data", str(data), "--out", str(tmp_path), "--steps", "3", "--batch", "8",
                    "--config", "tiny", "--seed", "1", "--no-progress"]) == 0
    expert = sx.load_expert(tmp_path / "sync_expert.safetensors")
    assert expert.config == sx.SyncConfig.tiny()
    saved = torch.load(tmp_path / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(value, saved[name]) for name, value in expert.state_dict().items())
    _, provenance = read_metadata(tmp_path / "sync_expert.safetensors")
    assert provenance["steps"] == 3 and provenance["seed"] == 1 and len(provenance["data_sha256"]) == 64
    assert np.isfinite(provenance["val_loss"]) and 0 <= provenance["val_accuracy"] <= 1


def test_load_expert_says_how_to_make_one(tmp_path):
    with pytest.raises(UserError, match="avatar train sync"):
        sx.load_expert(tmp_path / "sync_expert.safetensors")
    motion = save_checkpoint(tmp_path / "motion.safetensors", MotionTransformer(MotionConfig.tiny()),
                             MotionConfig.tiny())
    with pytest.raises(UserError, match="not a lip-sync expert"):
        sx.load_expert(motion)


def test_finds_a_known_shift_in_a_held_out_voice(data, trained):
    clip = load_clips(data, "val")[0]
    for shift in (3, -3):
        r = sx.sync_offsets(trained, clip.features, sx.shift_motion(clip.motion, shift))
        assert abs(r.offset_frames - shift) <= 1, (shift, r.offset_frames, r.curve)
        assert r.offset_ms == 40 * r.offset_frames and r.has_speech
    aligned = sx.sync_offsets(trained, clip.features, clip.motion)
    other = np.concatenate([c.motion for c in load_clips(data, "train")])[: len(clip.motion)]
    unrelated = sx.sync_offsets(trained, clip.features, other)
    assert aligned.confidence > unrelated.confidence + 0.1
    again = sx.sync_offsets(trained, clip.features, clip.motion)
    assert np.array_equal(again.curve, aligned.curve) and again.confidence == aligned.confidence  # deterministic


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as exit_:
        sx.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "avatar train sync" in text and "--data" in text and "last.pt" in text and "avatar data synth" in text


def test_shipped_expert_hears_the_shipped_generators_speech_layout():
    """The shipped expert reads the speech features the default generator conditions on (and the corpus caches)."""
    expert = sx.load_expert(assets.ASSETS_DIR / "sync_expert.safetensors")
    generator, _ = read_metadata(assets.DEFAULT_MOTION)
    layout = expert.config.layout()
    assert expert.config == sx.SyncConfig()
    for name in ("chunk", "lookahead", "speech_window", "speech_layers", "speech_dim", "speech_tokens"):
        assert getattr(layout, name) == generator[name], name
