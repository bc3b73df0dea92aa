import numpy as np
import pytest
import torch

from engine.audio.frontend import extract_features
from engine.backends.eager import TorchStep
from engine.errors import UserError
from engine.io.checkpoint import save_checkpoint
from engine.motion import spec
from engine.motion.baseline import EMOTIONS
from engine.motion.generator import StreamingGenerator, silence
from engine.motion.learned import Blinks, LearnedDriver, LearnedOptions, load_generator
from engine.motion.model import MotionConfig, MotionTransformer
from tests.engine.motion.test_model import perturb_gates

CFG = MotionConfig.tiny()


@pytest.fixture
def model():
    torch.manual_seed(0)
    return perturb_gates(MotionTransformer(CFG)).eval()


@pytest.fixture
def features():
    rng = np.random.default_rng(0)
    return extract_features(0.1 * rng.standard_normal(16000 * 2 + 1999).astype(np.float32), with_vad=False)


def test_drive_is_the_streaming_generator_over_padded_chunks(model, features):
    """A clip whose length is no multiple of L: the tail is padded with silence, output trimmed to T."""
    motion = LearnedDriver(TorchStep(model), LearnedOptions(seed=3)).drive(features)
    assert motion.shape == (len(features), spec.D) and len(features) % CFG.chunk != 0
    gen = StreamingGenerator(TorchStep(model, LearnedOptions().sampler()), seed=3)
    padded = type(features).concat([features, silence(CFG.chunk + CFG.lookahead)])
    steps = [gen.step(padded[s : s + CFG.chunk + CFG.lookahead], "neutral")
             for s in range(0, len(features), CFG.chunk)]
    eyes = [spec.index(n) for n in ("eyeBlink_L", "eyeBlink_R", "eyeWide_L", "eyeWide_R")]
    rest = [i for i in range(spec.D) if i not in eyes]
    np.testing.assert_allclose(motion[:, rest], np.concatenate(steps)[: len(features), rest], atol=1e-6)
    np.testing.assert_array_equal(motion[:, eyes[0]], Blinks(3).step(features.vad))
    np.testing.assert_array_equal(motion, LearnedDriver(TorchStep(model), LearnedOptions(seed=3)).drive(features))


def test_blinks_do_not_depend_on_chunking_and_follow_the_seed():
    vad = np.r_[np.zeros(300), np.ones(400), np.zeros(300)].astype(np.float32)
    whole = Blinks(0).step(vad)
    blinks = Blinks(0)
    np.testing.assert_array_equal(whole, np.concatenate([blinks.step(vad[a:b]) for a, b in [(0, 7), (7, 500), (500, 1000)]]))
    assert whole.max() == 1.0 and not np.array_equal(whole, Blinks(1).step(vad))
    starts = np.count_nonzero(np.diff((whole > 0.5).astype(int)) == 1)
    assert 4 <= starts <= 30  # 40 s at ~17 a minute


def test_controls_scale_offsets_from_neutral_but_not_blinks(model, features):
    full = LearnedDriver(TorchStep(model), LearnedOptions()).drive(features)
    still = LearnedDriver(TorchStep(model), LearnedOptions(expressiveness=0.0, head_motion=0.0)).drive(features)
    neutral = spec.neutral()
    head = [spec.index(n) for n in spec.NAMES if n.startswith("head")]
    blink = spec.index("eyeBlink_L")
    np.testing.assert_allclose(still[:, head], np.broadcast_to(neutral[head], still[:, head].shape), atol=1e-6)
    np.testing.assert_allclose(still[:, spec.index("jawOpen")], neutral[spec.index("jawOpen")], atol=1e-6)
    np.testing.assert_array_equal(still[:, blink], full[:, blink])


def test_options_are_checked_as_user_errors():
    for bad in ({"steps": 0}, {"guidance_audio": -1.0}, {"emotion": "bored"}, {"expressiveness": 5.0}):
        with pytest.raises(UserError):
            LearnedOptions(**bad)


def test_load_generator_errors_name_the_fix(tmp_path, model):
    with pytest.raises(UserError, match="avatar train motion"):
        load_generator(tmp_path / "missing.safetensors")
    path = save_checkpoint(tmp_path / "odd.safetensors", model, CFG, emotions=["calm", "excited"])
    with pytest.raises(UserError, match="emotions"):
        load_generator(path)
    ok = save_checkpoint(tmp_path / "ok.safetensors", model, CFG, emotions=list(EMOTIONS))
    assert isinstance(load_generator(ok), MotionTransformer)


# ----------------------------------------------------------------------- the shipped weights' behaviour


@pytest.fixture(scope="module")
def shipped():
    return load_generator()


@pytest.fixture(scope="module")
def speech_features():
    from engine import assets
    from engine.audio.io import load_audio

    return extract_features(load_audio(assets.SAMPLE_SPEECH))


def _mean(motion, *names):
    return float(motion[:, [spec.index(n) for n in names]].mean())


def test_shipped_emotion_control_changes_the_expression(shipped, speech_features):
    neutral = LearnedDriver(TorchStep(shipped), LearnedOptions(emotion="neutral")).drive(speech_features)
    happy = LearnedDriver(TorchStep(shipped), LearnedOptions(emotion="happy")).drive(speech_features)
    sad = LearnedDriver(TorchStep(shipped), LearnedOptions(emotion="sad")).drive(speech_features)
    assert _mean(happy, "mouthSmile_L", "mouthSmile_R") > _mean(neutral, "mouthSmile_L", "mouthSmile_R") + 0.15
    assert _mean(sad, "mouthFrown_L", "mouthFrown_R") > _mean(neutral, "mouthFrown_L", "mouthFrown_R") + 0.1
    guided = LearnedDriver(TorchStep(shipped), LearnedOptions(emotion="happy", guidance_emotion=2.0)).drive(speech_features)
    assert _mean(guided, "mouthSmile_L", "mouthSmile_R") > _mean(happy, "mouthSmile_L", "mouthSmile_R")


def test_shipped_audio_guidance_scales_lip_motion(shipped, speech_features):
    jaw = spec.index("jawOpen")
    amplitude = {g: LearnedDriver(TorchStep(shipped), LearnedOptions(guidance_audio=g)).drive(speech_features)[:, jaw].std()
                 for g in (0.0, 1.0, 2.0)}
    assert amplitude[0.0] < 0.5 * amplitude[1.0] < amplitude[2.0]


def test_shipped_silence_idles_with_a_closed_mouth_and_blinks(shipped):
    quiet = extract_features(np.zeros(16000 * 12, np.float32))
    motion = LearnedDriver(TorchStep(shipped), LearnedOptions(seed=0)).drive(quiet)
    assert motion[:, spec.index("jawOpen")].max() < 0.08
    blinks = motion[:, spec.index("eyeBlink_L")] > 0.5
    assert 1 <= np.count_nonzero(np.diff(blinks.astype(int)) == 1) <= 8  # ~17 a minute, give or take


@pytest.mark.parametrize("name", ["motion", "motion_fast"])
def test_the_pretrained_weights_stay_loadable_and_rl_moved_the_shipped_ones(name, speech_features):
    """Each RL post-trained generator (the default, the live presets') and the weights it started from: same
    network, different motion, and the shipped file's provenance names that base by its hash."""
    import json

    from engine import assets
    from engine.io import sha256_file

    tuned = load_generator(assets.ASSETS_DIR / f"{name}.safetensors")
    base_path = assets.ASSETS_DIR / f"{name}_pretrained.safetensors"
    pretrained = load_generator(base_path)
    assert pretrained.config == tuned.config
    rl = json.loads((assets.ASSETS_DIR / "weights.json").read_text())[name]["provenance"]["rl"]
    assert rl["base_sha256"] == sha256_file(base_path) and rl["steps"] > 0
    before, after = (LearnedDriver(TorchStep(m), LearnedOptions(seed=0)).drive(speech_features[:50])
                     for m in (pretrained, tuned))
    assert np.abs(after - before).max() > 1e-3


def test_weights_made_without_guidance_run_without_it_wherever_they_load(tmp_path, model):
    """A checkpoint whose provenance records its sampler (RL rolled out without guidance) is sampled with it by
    the offline driver, the server's step registry and a live session's stream; a user's flag still wins; weights
    recording none keep the defaults."""
    from engine.backends.registry import StepRegistry
    from engine.motion.choice import Learned
    from engine.motion.learned import GUIDANCE_AUDIO, weights_sampler
    from engine.offline import RenderRequest
    from engine.stream.drivers import Controls, motion_stream

    plain = save_checkpoint(tmp_path / "plain.safetensors", model, CFG, emotions=list(EMOTIONS))
    free = save_checkpoint(tmp_path / "free.safetensors", model, CFG, emotions=list(EMOTIONS),
                           sampler={"guidance_audio": 1.0, "guidance_emotion": 1.0})
    assert weights_sampler(plain) == {} and weights_sampler(free)["guidance_audio"] == 1.0

    def offline(checkpoint, **flags):
        request = RenderRequest(audio=tmp_path / "a.wav", out=tmp_path / "o.mp4",
                                driver=Learned(checkpoint=checkpoint, backend="torch", **flags))
        return request.make_driver().generator.chunk_step.sampler.guidance_audio

    assert offline(free) == 1.0 and offline(plain) == GUIDANCE_AUDIO
    assert offline(free, guidance_audio=3.0) == 3.0
    registry = StepRegistry("torch")
    for weights, expected in ((free, 1.0), (plain, GUIDANCE_AUDIO)):
        step = registry.get(weights, 4)
        assert step.sampler.guidance_audio == expected
        stream = motion_stream(step, Controls(), 4, 2)
        assert stream._driver.generator.chunk_step.sampler.guidance_audio == expected
