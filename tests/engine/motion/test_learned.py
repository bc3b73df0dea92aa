import numpy as np
import pytest
import torch

from engine.audio.frontend import extract_features
from engine.errors import UserError
from engine.io.checkpoint import save_checkpoint
from engine.motion import spec
from engine.motion.baseline import EMOTIONS
from engine.motion.generator import StreamingGenerator, silence
from engine.motion.learned import LearnedDriver, LearnedOptions, load_generator
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
    motion = LearnedDriver(model, LearnedOptions(seed=3)).drive(features)
    assert motion.shape == (len(features), spec.D) and len(features) % CFG.chunk != 0
    gen = StreamingGenerator(model, LearnedOptions().sampler(), seed=3)
    padded = type(features).concat([features, silence(CFG.chunk + CFG.lookahead)])
    steps = [gen.step(padded[s : s + CFG.chunk + CFG.lookahead], "neutral")
             for s in range(0, len(features), CFG.chunk)]
    np.testing.assert_allclose(motion, np.concatenate(steps)[: len(features)], atol=1e-6)
    np.testing.assert_array_equal(motion, LearnedDriver(model, LearnedOptions(seed=3)).drive(features))


def test_controls_scale_offsets_from_neutral_but_not_blinks(model, features):
    full = LearnedDriver(model, LearnedOptions()).drive(features)
    still = LearnedDriver(model, LearnedOptions(expressiveness=0.0, head_motion=0.0)).drive(features)
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
