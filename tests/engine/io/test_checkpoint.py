import pytest
import torch

from engine.errors import UserError
from engine.io.checkpoint import load_model, read_metadata, save_checkpoint
from engine.motion.model import MotionConfig, MotionTransformer


def test_roundtrip_rebuilds_the_network_from_its_stored_config(tmp_path):
    torch.manual_seed(0)
    config = MotionConfig.tiny()
    model = MotionTransformer(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    path = save_checkpoint(tmp_path / "m.safetensors", model, config, seed=3, data="avatar data synth --hours 0.1")
    loaded, loaded_config, provenance = load_model(path, MotionTransformer, MotionConfig)
    assert loaded_config == config and provenance == {"seed": 3, "data": "avatar data synth --hours 0.1"}
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert not (tmp_path / "m.safetensors.tmp").exists()
    assert path.stat().st_mode & 0o777 == 0o644  # readable by everyone, like any shipped file


def test_missing_and_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_metadata(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="not a safetensors checkpoint"):
        read_metadata(junk)


def test_a_checkpoint_of_another_network_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "lin.safetensors", torch.nn.Linear(3, 2), MotionConfig.tiny())
    with pytest.raises(UserError, match="does not match MotionTransformer"):
        load_model(path, MotionTransformer, MotionConfig)
