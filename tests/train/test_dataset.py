
import numpy as np
import pytest
import torch

from engine.audio.frontend import AudioFeatures, extract_features
from engine.backends.eager import TorchStep
from engine.motion import spec
from engine.motion.generator import StreamingGenerator, UtteranceStats, emotion_index, prosody_features, silence
from engine.motion.model import NO_EMOTION, MotionConfig, MotionTransformer
from engine.motion.sampler import SamplerOptions
from train.dataset import Corpus, load_clips
from train.synth import corpus as synth

CONFIG = MotionConfig.tiny()



@pytest.fixture(scope="session")
def train_set(corpus_dir):
    return Corpus(corpus_dir, "train", CONFIG)


def test_batch_shapes_and_dtypes(train_set):
    c = CONFIG
    n, A, B, D = c.context // c.chunk, c.audio_frames, 5, spec.D
    b = train_set.sample_batch(np.random.default_rng(0), B)
    expected = {
        "context": ((B, c.context, D), torch.float32), "context_valid": ((B, c.context), torch.bool),
        "context_speech": ((B, n, A, c.speech_tokens, c.speech_dim), torch.float32),
        "context_prosody": ((B, n, A, c.n_prosody), torch.float32), "context_stats": ((B, n, c.n_stats), torch.float32),
        "target": ((B, c.chunk, D), torch.float32), "speech": ((B, A, c.speech_tokens, c.speech_dim), torch.float32),
        "prosody": ((B, A, c.n_prosody), torch.float32), "stats": ((B, c.n_stats), torch.float32),
        "emotion": ((B,), torch.int64), "ref": ((B, D), torch.float32), "start": ((B,), torch.int64),
    }
    for name, (shape, dtype) in expected.items():
        value = getattr(b, name)
        assert tuple(value.shape) == shape and value.dtype == dtype, name
    assert A == c.audio_past + c.chunk + c.lookahead
    assert ((b.emotion >= 0) & (b.emotion < NO_EMOTION)).all() and (b.start % c.chunk == 0).all()
    assert torch.allclose(b.ref, torch.from_numpy(spec.normalize(spec.neutral())).expand(B, -1))


def test_sampling_is_seeded(train_set):
    a = train_set.sample_batch(np.random.default_rng(3), 4)
    b = train_set.sample_batch(np.random.default_rng(3), 4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_context_validity_follows_the_clip_start(train_set):
    b = train_set.sample_batch(np.random.default_rng(1), 200)
    W = CONFIG.context
    frames = b.start[:, None] - W + torch.arange(W)
    assert torch.equal(b.context_valid, frames >= 0)
    first = b.start == 0
    assert first.any() and (b.start >= W).any()
    assert not b.context_valid[first].any()
    assert (b.stats[first] == 0).all()  # no speech heard before the first chunk
    neutral = torch.from_numpy(spec.normalize(spec.neutral()))
    assert torch.allclose(b.context[~b.context_valid], neutral.expand(int((~b.context_valid).sum()), -1))


def streamed_speech(features):
    """The speech features the streaming generator computes for each chunk of a clip (its own encode)."""
    c = CONFIG
    seen = []

    class Spy(TorchStep):
        def encode(self, mel):
            seen.append(super().encode(mel))
            return seen[-1]

    generator = StreamingGenerator(Spy(MotionTransformer(c), SamplerOptions(steps=1)))
    padded = AudioFeatures.concat([features, silence(c.chunk + c.lookahead)])
    for s in range(0, len(features), c.chunk):
        generator.step(padded[s : s + c.chunk + c.lookahead])
    return torch.cat(seen)


def test_window_matches_the_clip_and_its_features(corpus_dir, train_set):
    """Target motion, audio window (P silent frames before the clip), speech features and statistics come
    from the clip itself, as the streaming generator meets them."""
    c = CONFIG
    clip = synth.load_shard(corpus_dir / "shard_00000.npz")[0]
    feats = extract_features(clip["audio"])
    s = 2 * c.chunk
    rng = np.random.default_rng(0)
    for _ in range(500):  # find a window of clip 0 at start s
        b = train_set.sample_batch(rng, 16)
        hits = [i for i in range(16) if b.start[i] == s and torch.allclose(
            b.target[i], torch.from_numpy(spec.normalize(clip["motion"][s : s + c.chunk])))]
        if hits:
            break
    i = hits[0]
    P = c.audio_past
    assert np.allclose(b.prosody[i].numpy(), prosody_features(feats[s - P : s + c.chunk + c.lookahead]))
    speech = streamed_speech(feats)  # (chunks, A, tokens, d)
    assert torch.allclose(b.speech[i], speech[s // c.chunk], atol=2e-2)  # cached as float16
    assert not torch.allclose(b.speech[i], speech[s // c.chunk + 1], atol=2e-2)
    assert np.allclose(b.context[i, -s:].numpy(), spec.normalize(clip["motion"][:s]))
    stats = UtteranceStats()
    stats.update(prosody_features(feats[:s]))
    assert np.allclose(b.stats[i].numpy(), stats.vector(), atol=1e-6)
    assert b.emotion[i] == emotion_index(clip["emotion"])
    # The first context chunk inside the clip (frame 0) hears P silent frames before the clip.
    j = (c.context - s) // c.chunk
    assert torch.allclose(b.context_speech[i, j], speech[0], atol=2e-2)
    assert (b.context_prosody[i, j, :P] == torch.from_numpy(prosody_features(silence(P)))).all()


def test_validation_split_holds_other_voices(corpus_dir):
    val = Corpus(corpus_dir, "val", CONFIG)
    assert len(val) > 0 and val.windows > 0
    a, b = val.fixed_batches(7, 2, 3), val.fixed_batches(7, 2, 3)
    assert all(torch.equal(x, y) for p, q in zip(a, b) for x, y in zip(p, q))


def test_missing_corpus_says_how_to_build_one(tmp_path):
    with pytest.raises(ValueError, match="avatar data synth"):
        Corpus(tmp_path, "train", CONFIG)


def test_features_are_cached_per_shard_and_recomputed_when_stale(corpus_dir, tmp_path):
    import shutil

    copy = tmp_path / "corpus"
    shutil.copytree(corpus_dir, copy, ignore=shutil.ignore_patterns("features"))
    first = load_clips(copy, "train")
    caches = sorted((copy / "features").glob("*.npz"))
    assert [c.stem for c in caches] == sorted(p.stem for p in copy.glob("shard_*.npz"))
    stamp = caches[0].stat().st_mtime_ns
    again = load_clips(copy, "train")
    assert caches[0].stat().st_mtime_ns == stamp  # read, not rewritten
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.features.mel, b.features.mel)
        np.testing.assert_array_equal(a.features.vad, b.features.vad)
        assert len(a.features) == len(a.motion)
    # A rebuilt shard (different bytes) makes its cache stale: the features are computed afresh.
    shard = copy / f"{caches[0].stem}.npz"
    with np.load(shard) as z:
        arrays = dict(z)
    arrays["audio"] = (arrays["audio"] // 2).astype(arrays["audio"].dtype)
    with shard.open("wb") as f:
        np.savez(f, **arrays)
    quieter = load_clips(copy, "train")
    assert caches[0].stat().st_mtime_ns != stamp
    assert quieter[0].features.energy.mean() < first[0].features.energy.mean() - 3.0  # ~6 dB quieter


def _write_cache_when_both_are_ready(cache, barrier):
    from train.dataset import _cached_rows

    def compute():
        barrier.wait()  # both processes write at once
        return [{"x": np.full((4_000_000,), i, np.float32)} for i in range(2)]

    _cached_rows(cache, "key", compute)


def test_two_runs_caching_one_shard_at_once_both_finish(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    cache = tmp_path / "features" / "shard.npz"
    writers = [ctx.Process(target=_write_cache_when_both_are_ready, args=(cache, barrier)) for _ in range(2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
    assert [w.exitcode for w in writers] == [0, 0]  # a shared temporary file: the second rename finds it gone
    with np.load(cache) as z:
        assert str(z["key"]) == "key" and z["x"].shape == (8_000_000,)
    assert list(cache.parent.glob("*.tmp")) == []
