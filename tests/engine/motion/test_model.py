import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.audio.frontend import AudioFeatures
from engine.backends.eager import TorchStep, chunk_step
from engine.motion import spec
from engine.motion.cache import KVCache
from engine.motion.generator import StreamingGenerator, UtteranceStats, prosody_features
from engine.motion.model import (
    NO_EMOTION,
    Conditions,
    LocalAudioEncoder,
    MotionConfig,
    MotionTransformer,
    adaln,
    timestep_embedding,
)
from engine.motion.sampler import SamplerOptions, sample
from engine.timebase import MELS_PER_FRAME, N_MELS

CFG = MotionConfig.tiny()
OPTIONS = SamplerOptions(steps=3, guidance_audio=2.0, guidance_emotion=1.5)


def random_conditions(batch=1, emotion=3, frames=CFG.audio_frames):
    a = frames
    return Conditions(
        speech=torch.randn(batch, a, CFG.speech_tokens, CFG.speech_dim),
        prosody=torch.randn(batch, a, CFG.n_prosody),
        stats=torch.randn(batch, CFG.n_stats),
        audio_on=torch.ones(batch, dtype=torch.bool),
        emotion=torch.full((batch,), emotion),
        ref=torch.randn(batch, CFG.motion_dim) * 0.1,
    )


def perturb_gates(model, scale=0.3):
    """Move every AdaLN modulation away from its zero init, so conditions and the cache matter."""
    with torch.no_grad():
        for module in [b.adaln for b in model.blocks] + [model.final_adaln]:
            module.weight.normal_(0, scale)
            module.bias.normal_(0, scale)
    return model


@pytest.fixture
def model():
    torch.manual_seed(0)
    return perturb_gates(MotionTransformer(CFG)).eval()


def test_config_round_trips_through_a_dict():
    for config in (CFG, MotionConfig()):
        assert MotionConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown MotionConfig fields"):
        MotionConfig.from_dict({**CFG.to_dict(), "n_experts": 3})
    with pytest.raises(ValueError, match="multiple of n_heads"):
        MotionConfig(d_model=30, n_heads=4)


def test_forward_shapes_and_commit():
    torch.manual_seed(0)
    model = MotionTransformer(CFG)
    cache = KVCache.empty(CFG, batch=2)
    x = torch.randn(2, CFG.chunk, CFG.motion_dim)
    v = model(x, torch.rand(2), random_conditions(2), cache)
    assert v.shape == (2, CFG.chunk, CFG.motion_dim)
    new = model.commit(x, random_conditions(2), cache)
    assert new.keys.shape == cache.keys.shape == (CFG.n_layers, 2, CFG.n_heads, CFG.context, CFG.d_model // CFG.n_heads)
    assert new.valid[:, -CFG.chunk:].all() and not new.valid[:, : -CFG.chunk].any()


def test_cache_ring_wraps_beyond_the_window():
    cache = KVCache.empty(CFG, batch=1)
    L, W = CFG.chunk, CFG.context
    for n in range(5):  # 20 frames through an 8-frame window
        frames = torch.arange(n * L, (n + 1) * L).float()  # (L,) each slot's value is its frame index
        new = frames.view(1, 1, 1, L, 1).expand(CFG.n_layers, 1, CFG.n_heads, L, CFG.d_model // CFG.n_heads)
        cache = cache.push(new, -new)
        if n == 0:
            assert cache.valid.tolist() == [[False] * (W - L) + [True] * L]
            assert cache.pos.tolist() == [list(range(L - W, L))]
    expected = torch.arange(5 * L - W, 5 * L)
    assert cache.valid.all()
    assert torch.equal(cache.pos[0], expected)
    assert torch.equal(cache.keys[1, 0, 1, :, 0], expected.float())
    assert torch.equal(cache.values[0, 0, 0, :, 3], -expected.float())
    assert cache.next_frame().item() == 5 * L


def test_streaming_with_the_cache_equals_recomputing_the_window(model):
    """Chunk by chunk with the KV cache == rebuilding the last W frames' keys/values from scratch."""
    n_chunks, L, W = 12, CFG.chunk, CFG.context
    torch.manual_seed(1)
    conds = [random_conditions() for _ in range(n_chunks)]
    noises = [torch.randn(1, L, CFG.motion_dim) for _ in range(n_chunks)]

    cache, streamed = KVCache.empty(CFG), []
    for cond, noise in zip(conds, noises):
        clean = sample(model, noise, cond, cache, OPTIONS)
        cache = model.commit(clean, cond, cache)
        streamed.append(clean)

    reference = []
    for n, (cond, noise) in enumerate(zip(conds, noises)):
        first = max(0, n - W // L)  # oldest chunk still inside the window
        keys, values = [], []
        for j in range(first, n):  # each past chunk's keys/values from its clean frames alone, at t = 1
            with torch.no_grad():
                _, k, v = model._run(reference[j], torch.ones(1), conds[j], KVCache.empty(CFG))
            keys.append(k)
            values.append(v)
        pad = W - (n - first) * L
        shape = (CFG.n_layers, 1, CFG.n_heads, pad, CFG.d_model // CFG.n_heads)
        window = KVCache(
            keys=torch.cat([torch.zeros(shape)] + keys, dim=3),
            values=torch.cat([torch.zeros(shape)] + values, dim=3),
            valid=torch.tensor([[False] * pad + [True] * (W - pad)]),
            pos=torch.arange(n * L - W, n * L)[None],
        )
        reference.append(sample(model, noise, cond, window, OPTIONS))

    for n, (a, b) in enumerate(zip(streamed, reference)):
        assert torch.allclose(a, b, atol=1e-5), f"chunk {n} differs by {(a - b).abs().max():.2e}"
    # The cache matters: without it the late chunks come out differently.
    alone = sample(model, noises[-1], conds[-1], KVCache.empty(CFG), OPTIONS)
    assert (alone - streamed[-1]).abs().max() > 1e-3


def test_validity_mask_hides_empty_slots(model):
    cond, noise = random_conditions(), torch.randn(1, CFG.chunk, CFG.motion_dim)
    empty = KVCache.empty(CFG)
    garbage = empty._replace(keys=torch.randn_like(empty.keys) * 100, values=torch.randn_like(empty.values) * 100)
    a, b = sample(model, noise, cond, empty, OPTIONS), sample(model, noise, cond, garbage, OPTIONS)
    assert torch.equal(a, b)
    seen = garbage._replace(valid=torch.ones_like(garbage.valid))
    assert not torch.allclose(a, sample(model, noise, cond, seen, OPTIONS))


def test_zero_initialised_gates_make_the_output_independent_of_conditions():
    torch.manual_seed(0)
    model = MotionTransformer(CFG).eval()
    x, t = torch.randn(1, CFG.chunk, CFG.motion_dim), torch.rand(1)
    full = KVCache.empty(CFG)
    full = full._replace(keys=torch.randn_like(full.keys), values=torch.randn_like(full.values),
                         valid=torch.ones_like(full.valid))
    with torch.no_grad():
        a = model(x, t, random_conditions(emotion=1), KVCache.empty(CFG))
        b = model(x, torch.rand(1), random_conditions(emotion=NO_EMOTION), full)
        c = model(x + 0.5, t, random_conditions(emotion=1), KVCache.empty(CFG))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)  # it still reads x_t


def test_adaln_is_per_frame():
    """Changing frame 2's audio changes frame 2's output. With attention gated off, exactly the frames
    whose audio window (P before, K after) holds frame 2 change: the modulation is per frame."""
    config = replace(CFG, chunk=8, context=16, speech_window=11)
    torch.manual_seed(0)
    model = perturb_gates(MotionTransformer(config)).eval()
    P, K, d = config.audio_past, config.lookahead, config.d_model
    x, t, cache = torch.randn(1, config.chunk, config.motion_dim), torch.rand(1), KVCache.empty(config)
    cond = random_conditions(frames=config.audio_frames)
    prosody = cond.prosody.clone()
    prosody[0, P + 2] += 3.0  # chunk frame 2
    changed = cond._replace(prosody=prosody)

    def frames_that_change():
        with torch.no_grad():
            diff = (model(x, t, cond, cache) - model(x, t, changed, cache)).abs().amax(-1)[0]
        return (diff > 1e-6).tolist()

    assert frames_that_change() == [True] * config.chunk  # attention spreads it over the chunk
    with torch.no_grad():
        for block in model.blocks:  # gate1 = rows 2d:3d of the 6d modulation
            block.adaln.weight[2 * d: 3 * d] = 0
            block.adaln.bias[2 * d: 3 * d] = 0
    assert frames_that_change() == [2 - K <= j <= 2 + P for j in range(config.chunk)]


def speechlike(frames, seed=0):
    rng = np.random.default_rng(seed)
    return AudioFeatures(
        rng.normal(size=(frames, MELS_PER_FRAME, N_MELS)).astype(np.float32),
        rng.uniform(-60, -10, frames).astype(np.float32),
        rng.uniform(0, 250, frames).astype(np.float32) * (rng.random(frames) > 0.3),
        rng.random(frames).astype(np.float32),
        rng.random(frames).astype(np.float32),
    )


def test_generator_streams_bounded_reproducible_motion(model):
    L, K = CFG.chunk, CFG.lookahead
    features = speechlike(6 * L + K)
    gen = StreamingGenerator(TorchStep(model, OPTIONS), seed=3)

    def run():
        return np.concatenate([gen.step(features[i: i + L + K], "happy") for i in range(0, 6 * L, L)])

    first = run()
    assert first.shape == (6 * L, spec.D)
    assert np.all(first >= spec.LOW) and np.all(first <= spec.HIGH)
    assert gen.cache.next_frame().item() == 6 * L
    gen.reset()
    assert np.array_equal(run(), first)
    with pytest.raises(ValueError, match="L \\+ K"):
        gen.step(features[:L], "happy")
    with pytest.raises(ValueError, match="emotion must be one of"):
        gen.step(features[: L + K], "bored")


def test_utterance_stats_do_not_depend_on_chunking():
    prosody = prosody_features(speechlike(200))
    whole, parts = UtteranceStats(), UtteranceStats()
    whole.update(prosody)
    for i in range(0, 200, 7):
        parts.update(prosody[i: i + 7])
    assert np.allclose(whole.vector(), parts.vector())
    assert UtteranceStats().vector().tolist() == [0.0] * 8


@torch.no_grad()
def test_embedded_conditions_give_the_same_velocity_and_commit(model):
    """Encoding the conditions once per chunk (MotionTransformer.embed) changes no number."""
    x, t = torch.randn(2, CFG.chunk, CFG.motion_dim), torch.rand(2)
    cond, cache = random_conditions(2), KVCache.empty(CFG, 2)
    emb = model.embed(cond)
    assert torch.equal(model(x, t, cond, cache), model(x, t, emb, cache))
    a, b = model.commit(x, cond, cache), model.commit(x, emb, cache)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    with pytest.raises(ValueError, match="audio frames"):
        model.embed(random_conditions(1, frames=CFG.audio_frames + 1))


def test_commit_skips_what_it_does_not_read(model):
    """A commit pushes the keys/values a full run at t = 1 computes, without running the last block's
    attention and MLP or the output head, whose results nothing reads."""
    x, cond, cache = torch.randn(2, CFG.chunk, CFG.motion_dim), random_conditions(2), KVCache.empty(CFG, 2)
    ran = []
    for module in (model.blocks[-1].proj, model.blocks[-1].mlp, model.out, model.blocks[0].mlp):
        module.register_forward_hook(lambda m, *_: ran.append(m))
    committed = model.commit(x, cond, cache)
    assert ran == [model.blocks[0].mlp], "the commit ran layers whose output it drops"
    _, k, v = model._run(x, torch.ones(2), cond, cache.hidden())
    assert all(torch.equal(p, q) for p, q in zip(committed, cache.push(k, v)))


def test_audio_window_is_the_convolution():
    """LocalAudioEncoder's window, one matrix product over unfolded frames, is its Conv1d's sums."""
    torch.manual_seed(0)
    config = replace(CFG, audio_past=2, lookahead=1)
    encoder = LocalAudioEncoder(5, config).eval()
    feats = torch.randn(3, config.audio_frames, 5)
    with torch.no_grad():
        h = encoder.frame(feats).transpose(1, 2)
        reference = F.conv1d(h, encoder.window.weight, encoder.window.bias).transpose(1, 2)
        assert torch.allclose(encoder(feats), reference, atol=1e-6)


def test_adaln_gain_is_one_plus_scale(model):
    """The scale rows leave `adaln` with their 1 added (the gain); shift and gate rows as the layer gives them."""
    block, d = model.blocks[0], CFG.d_model
    c = torch.randn(5, d)
    with torch.no_grad():
        plain = block.adaln(c).chunk(6, dim=-1)
        folded = adaln(block.adaln, c, block.gain_ones).chunk(6, dim=-1)
        final = adaln(model.final_adaln, c, model.gain_ones).chunk(2, dim=-1)
    for i, (p, f) in enumerate(zip(plain, folded)):
        assert torch.allclose(f, p + 1 if i in (1, 4) else p, atol=1e-6)  # scale1 (1) and scale2 (4)
    assert torch.allclose(final[1], model.final_adaln(c).chunk(2, dim=-1)[1] + 1, atol=1e-6)


@torch.no_grad()
def test_chunk_step_commits_what_the_raw_conditions_commit(model):
    """Guided, the chunk step encodes the conditions once (the guidance batch) and commits with its
    last copy: the same clean chunk and cache as sampling the raw conditions and embedding them anew."""
    noise, cond, cache = torch.randn(1, CFG.chunk, CFG.motion_dim), random_conditions(1), KVCache.empty(CFG)
    clean, new_cache = chunk_step(model, OPTIONS, cond, noise, cache)
    reference = sample(model, noise, cond, cache, OPTIONS).clamp(-1, 1)
    assert torch.allclose(clean, reference, atol=1e-5)
    for got, want in zip(new_cache, model.commit(reference, model.embed(cond), cache)):
        assert torch.allclose(got.float(), want.float(), atol=1e-5)


def reference_run(model, x, t, cond, cache):
    """The network's math written plainly (3-D tokens, a loop over heads, Conv1d, 1 + scale): an oracle
    for MotionTransformer._run, whose code is arranged for speed. -> output, stacked keys, stacked values."""
    cfg, (B, L, _) = model.config, x.shape
    d, nh = cfg.d_model, cfg.n_heads
    hd = d // nh

    def local(encoder, feats):
        h = encoder.frame(feats).transpose(1, 2)
        return F.conv1d(h, encoder.window.weight, encoder.window.bias).transpose(1, 2)

    def modulate(h, shift, scale):
        return h * (1 + scale) + shift

    levels = torch.stack([local(model.phonetic, cond.speech.flatten(2)), local(model.prosodic, cond.prosody),
                          model.global_stats(cond.stats)[:, None].expand(B, L, d)], dim=2)
    levels = torch.where(cond.audio_on[:, None, None, None], levels, model.null_audio)
    static = model.emotion(cond.emotion) + model.ref_in(cond.ref)
    shared = (static + model.time_mlp(timestep_embedding(t, d)))[:, None]  # (B, 1, d)
    q_pos = cache.pos[:, -1:] + 1 + torch.arange(L)
    dist = (q_pos[:, :, None] - torch.cat([cache.pos, q_pos], 1)[:, None, :]).clamp(-(L - 1), cfg.context + L - 1)
    valid = torch.cat([cache.valid, torch.ones(B, L, dtype=torch.bool)], 1)
    h, keys, values = model.x_in(x), [], []
    for i, block in enumerate(model.blocks):
        mix = block.level_logits.softmax(0)
        c = F.silu(sum(mix[n] * levels[:, :, n] for n in range(3)) + shared)
        shift1, scale1, gate1, shift2, scale2, gate2 = block.adaln(c).chunk(6, dim=-1)
        q, k, v = block.qkv(modulate(block.norm1(h), shift1, scale1)).split(d, dim=-1)
        heads = []
        for j in range(nh):
            cols = slice(j * hd, (j + 1) * hd)
            kj = torch.cat([cache.keys[i][:, j], k[..., cols]], 1)  # (B, W+L, hd)
            vj = torch.cat([cache.values[i][:, j], v[..., cols]], 1)
            scores = q[..., cols] @ kj.transpose(1, 2) / math.sqrt(hd) + block.rel_bias[j][dist + block.offset]
            heads.append(scores.masked_fill(~valid[:, None], float("-inf")).softmax(-1) @ vj)
        h = h + gate1 * block.proj(torch.cat(heads, -1))
        h = h + gate2 * block.mlp(modulate(block.norm2(h), shift2, scale2))
        keys.append(k.view(B, L, nh, hd).transpose(1, 2))
        values.append(v.view(B, L, nh, hd).transpose(1, 2))
    shift, scale = model.final_adaln(F.silu(levels.mean(2) + shared)).chunk(2, dim=-1)
    return model.out(modulate(model.norm_out(h), shift, scale)), torch.stack(keys), torch.stack(values)


@torch.no_grad()
def test_the_network_computes_its_documented_math(model):
    """Velocity and committed keys/values equal the plain formulation's, on a cache holding earlier chunks
    (some slots still empty), a batch mixing dropped audio and the null emotion, every modulation non-zero."""
    B = 3
    cond = random_conditions(B)._replace(audio_on=torch.tensor([True, False, True]),
                                         emotion=torch.tensor([1, 3, NO_EMOTION]))
    cache = KVCache.empty(CFG, B)
    for _ in range(2):  # 2 chunks of 4 in a window of 8: a full cache
        cache = model.commit(torch.randn(B, CFG.chunk, CFG.motion_dim), random_conditions(B), cache)
    partial = model.commit(torch.randn(B, CFG.chunk, CFG.motion_dim), cond, KVCache.empty(CFG, B))  # half empty
    for c in (cache, partial):
        x, t = torch.randn(B, CFG.chunk, CFG.motion_dim), torch.rand(B)
        for got, want in zip(model._run(x, t, cond, c), reference_run(model, x, t, cond, c)):
            assert torch.allclose(got, want, atol=1e-5), f"differs by {(got - want).abs().max():.2e}"
