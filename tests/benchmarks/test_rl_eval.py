"""benchmarks/rl_eval.py end to end on a real recording (the alsa-utils voice) and tiny weights: both generators
driven, rendered, measured by FaceMesh, the checks and the A/B sheet written."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

ALSA = Path("/usr/share/sounds/alsa")


@pytest.fixture(scope="module")
def slt_corpus(tmp_path_factory):
    """20 s of synthetic speech with flite's slt voice held out: a val clip pocketsphinx aligns (espeak's often
    defeat it), for the long-speech roughness."""
    from train.synth import corpus as synth
    from train.synth import tts

    if "flite:slt" not in tts.available_voices():
        pytest.skip("apt-get install flite")
    out = tmp_path_factory.mktemp("slt_corpus")
    synth.synth_corpus(out, hours=20 / 3600, seed=0, holdout=("flite:slt",), progress=False)
    return out


@pytest.mark.slow
@pytest.mark.skipif(not (ALSA / "Front_Center.wav").is_file(), reason="apt-get install alsa-utils")
def test_rl_eval_compares_two_generators_on_rendered_human_speech(tmp_path, tiny_motion, slt_corpus, monkeypatch):
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
    monkeypatch.setattr(rl_eval, "LONG_S", 1.0)  # the tiny corpus's clips are a few seconds
    result = rl_eval.main(["--checkpoint", str(tuned), "--base", str(tiny_motion), "--audio-dir", str(audio),
                           "--seeds", "1", "--size", "128", "--corpus", str(slt_corpus), "--out", str(out)])
    assert set(result["summary"]) == {"pretrained", "rl"} and result["recordings"] == 1
    assert len(result["rows"]) == 2 and {r["weights"] for r in result["rows"]} == {"pretrained", "rl"}
    # the two tiny generators differ, so their motion does
    yaw = {r["weights"]: r["yaw_std"] for r in result["rows"]}
    assert yaw["pretrained"] != yaw["rl"]
    # each mouth's roughness also against its own motion with the mouth driven by the phones, rendered alike
    assert all(0 < r["roughness_rendered"] < 10 and r["lag_ms"] % 40 == 0 for r in result["rows"])
    assert result["targets"][0]["what"].startswith("lip-sync r not lower") and len(result["targets"]) == 9
    # long speech: the rendered roughness too, on the clips pocketsphinx aligned, rendered and read alike
    long = result["long_speech"]
    assert long["clips"] == 1 and long["roughness_rendered_paired"]["pairs"] == 1
    assert all(0 < r["roughness_rendered"][w] < 10 for r in long["rows"] if "roughness_rendered" in r
               for w in ("pretrained", "rl"))
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
    assert base_of(assets.FAST_MOTION) == assets.FAST_PRETRAINED_MOTION
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


@pytest.mark.slow
def test_long_speech_compares_the_heads_sway_over_whole_held_out_voice_clips(tmp_path, slt_corpus, tiny_motion,
                                                                             monkeypatch):
    """--corpus: both generators drive whole clips of the corpus's held-out voices; the paired yaw difference is
    the RL weights' minus the base's on each clip and seed, and it adds the ninth check."""
    from benchmarks import rl_eval
    from engine.backends.eager import TorchStep
    from engine.errors import UserError
    from engine.motion.learned import LearnedDriver, LearnedOptions, load_generator

    monkeypatch.setattr(rl_eval, "LONG_S", 1.0)  # the tiny corpus's clips are a few seconds
    calm = load_generator(tiny_motion)

    def drive(which, features, seed):
        motion = LearnedDriver(TorchStep(calm), LearnedOptions(seed=seed)).drive(features)
        return motion * (2.0 if which == "rl" else 1.0)  # the "rl" head turns twice as far

    aligned = []

    def rough(motion, phones):
        aligned.append(phones)
        return float(np.abs(np.diff(motion[:, 0])).sum())

    long = rl_eval.long_speech(slt_corpus, drive, 2, lambda m: m[:, 0], rough)
    assert long["clips"] >= 1 and long["paired"]["pairs"] == 2 * long["clips"]
    # roughness where the text aligned: each clip's phones, both weights, and the "rl" head is twice as rough
    assert aligned and all(len(p) > 3 for p in aligned)
    rough_pairs = long["roughness_rendered_paired"]
    assert rough_pairs["pairs"] == len(aligned) // 2 and rough_pairs["better"] == 0 and rough_pairs["median"] > 0
    assert "roughness against the rendered reference" in "\n".join(rl_eval.long_table(long))
    assert "roughness" not in "\n".join(rl_eval.long_table(rl_eval.long_speech(slt_corpus, drive, 1,
                                                                                lambda m: m[:, 0])))
    assert long["paired"]["better"] == long["paired"]["pairs"] > 0
    assert long["yaw_std"]["rl"]["median"] == pytest.approx(2 * long["yaw_std"]["pretrained"]["median"], rel=1e-5)
    assert all(r["seconds"] >= 1.0 for r in long["rows"])
    summary = {"rl": {"bilabial": {"median": 0.1}, "roughness_rendered": {"median": 1.0}, "yaw_std": {"median": 0.02},
                      "tripped": 0.0}}
    pairs = {k: {"median": 0.0} for k in ("r", "roughness_rendered", "head_jitter", "rest_change")}
    assert len(rl_eval.targets(summary, pairs)) == 8
    ninth = rl_eval.targets(summary, pairs, long)[-1]
    assert ninth["what"].startswith("head yaw std on long speech") and ninth["met"]
    assert not rl_eval.targets(summary, pairs, {**long, "paired": {**long["paired"], "median": -0.001}})[-1]["met"]
    with pytest.raises(UserError, match="avatar data synth"):
        rl_eval.long_speech(tmp_path, drive, 1, lambda m: m[:, 0])
