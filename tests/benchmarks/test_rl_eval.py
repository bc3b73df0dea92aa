"""benchmarks/rl_eval.py end to end on a real recording (the alsa-utils voice) and tiny weights: both generators
driven, rendered, measured by FaceMesh, the checks and the A/B sheet written."""

import json
import shutil
from pathlib import Path

import pytest

ALSA = Path("/usr/share/sounds/alsa")


@pytest.mark.slow
@pytest.mark.skipif(not (ALSA / "Front_Center.wav").is_file(), reason="apt-get install alsa-utils")
def test_rl_eval_compares_two_generators_on_rendered_human_speech(tmp_path, tiny_motion):
    import torch

    from benchmarks import rl_eval
    from engine.io.checkpoint import save_checkpoint
    from engine.motion.baseline import EMOTIONS
    from engine.motion.learned import load_generator

    model = load_generator(tiny_motion)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    tuned = save_checkpoint(tmp_path / "tuned.safetensors", model, model.config, emotions=list(EMOTIONS))

    audio = tmp_path / "human"
    audio.mkdir()
    shutil.copy(ALSA / "Front_Center.wav", audio / "front.wav")
    (audio / "front.txt").write_text("Front, center!")
    out = tmp_path / "rl_eval"
    result = rl_eval.main(["--checkpoint", str(tuned), "--base", str(tiny_motion), "--audio-dir",
                           str(audio), "--seeds", "1", "--size", "128", "--out", str(out)])
    assert set(result["summary"]) == {"pretrained", "rl"} and result["recordings"] == 1
    assert len(result["rows"]) == 2 and {r["weights"] for r in result["rows"]} == {"pretrained", "rl"}
    # the two tiny generators differ, so their motion does
    yaw = {r["weights"]: r["yaw_std"] for r in result["rows"]}
    assert yaw["pretrained"] != yaw["rl"]
    # each mouth's roughness also against its own motion with the mouth driven by the phones, rendered alike
    assert all(0 < r["roughness_rendered"] < 10 and r["lag_ms"] % 40 == 0 for r in result["rows"])
    assert result["targets"][0]["what"].startswith("lip-sync r not lower") and len(result["targets"]) == 8
    # at rest, after the speech: the rendered mouth region changes less a frame than while speaking
    assert all(0 <= r["rest_change"] < r["speaking_change"] and r["rest_head"] >= 0 for r in result["rows"])
    assert result["paired"]["rest_change"]["pairs"] == 1
    assert result["paired"]["yaw_std"]["pairs"] == 1
    assert result["paired"]["yaw_std"]["median"] == yaw["rl"] - yaw["pretrained"]
    text = out.with_suffix(".md").read_text()
    assert "python benchmarks/rl_eval.py" in text and ("**met**" in text or "**missed**" in text)
    assert (tmp_path / "rl_eval_sheet.png").stat().st_size > 10_000
    assert json.loads(out.with_suffix(".json").read_text())["command"] == result["command"]


def test_the_base_is_found_by_its_hash_not_its_old_path(tmp_path, tiny_motion, monkeypatch):
    """The shipped default's provenance names its base relative to the repo, found from any directory; a recorded
    base path that now holds other weights is passed over: the base is the file with the recorded hash, or a clear
    error."""
    import shutil

    from benchmarks.rl_eval import base_of
    from engine import assets
    from engine.errors import UserError
    from engine.io import sha256_file

    monkeypatch.chdir(tmp_path)
    assert base_of(assets.DEFAULT_MOTION) == assets.PRETRAINED_MOTION
    from engine.io.checkpoint import read_metadata, save_checkpoint
    from engine.motion.learned import load_generator

    base = shutil.copy(tiny_motion, tmp_path / "base.safetensors")
    model = load_generator(base)
    rl = {"base": str(base), "base_sha256": sha256_file(base)}
    tuned = save_checkpoint(tmp_path / "rl.safetensors", model, model.config, rl=rl)
    assert base_of(tuned) == base and read_metadata(tuned)[1]["rl"]["base"] == str(base)
    base.write_bytes(b"overwritten")
    with pytest.raises(UserError, match="pass the weights it started from with --base"):
        base_of(tuned)
