import json

import pytest

from engine import assets
from engine.errors import UserError
from engine.io import sha256_file
from engine.io.checkpoint import save_checkpoint
from engine.motion.model import MotionConfig, MotionTransformer
from train import ship


@pytest.fixture
def assets_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(assets, "ASSETS_DIR", tmp_path / "assets")
    monkeypatch.setattr(ship, "WEIGHTS_MANIFEST", tmp_path / "assets" / "weights.json")
    (tmp_path / "assets").mkdir()
    return tmp_path / "assets"


def test_ship_copies_weights_and_records_how_they_were_made(tmp_path, assets_dir):
    corpus = tmp_path / "manifest.json"
    corpus.write_text(json.dumps({"command": "avatar data synth --out d --hours 1 --seed 1", "seed": 1,
                                  "hours_written": 1.0, "voices": ["flite:awb"], "holdout": ["flite:slt"]}))
    weights = save_checkpoint(tmp_path / "m.safetensors", MotionTransformer(MotionConfig.tiny()),
                              MotionConfig.tiny(), data=str(corpus), data_sha256=sha256_file(corpus), seed=1, steps=7)
    report = tmp_path / "eval.json"
    report.write_text(json.dumps({"command": "avatar eval lipsync --audio-dir h",
                                  "sections": {"human": {"summary": {"learned": {"median_r": 0.9}}, "scores": []}}}))
    entry = ship.ship(weights, "motion", ["avatar train motion --data d --out c"], report)
    assert (assets_dir / "motion.safetensors").read_bytes() == weights.read_bytes()
    saved = json.loads((assets_dir / "weights.json").read_text())["motion"]
    assert saved == entry
    assert saved["provenance"]["steps"] == 7 and saved["corpus"]["command"].startswith("avatar data synth")
    assert saved["evaluation"]["human"]["learned"]["median_r"] == 0.9 and len(saved["sha256"]) == 64
    ship.ship(weights, "sync_expert", [])  # a second name keeps the first entry
    assert set(json.loads((assets_dir / "weights.json").read_text())) == {"motion", "sync_expert"}
    # The corpus rebuilt at that path since (another build: piper's noise is unseeded) is not read as the one
    # trained on: the record shipped earlier of the same manifest is kept; with none, a note says so.
    corpus.write_text(json.dumps({"command": "avatar data synth --out d --hours 1 --seed 1", "hours_written": 1.1}))
    assert ship.ship(weights, "motion_fast", [])["corpus"] == saved["corpus"]
    (assets_dir / "weights.json").unlink()
    note = ship.ship(weights, "motion_fast", [])["corpus"]
    assert "another build" in note["note"] and note["manifest_sha256"] == saved["corpus"]["manifest_sha256"]


def test_oversized_weights_are_refused(tmp_path, assets_dir, monkeypatch):
    weights = save_checkpoint(tmp_path / "m.safetensors", MotionTransformer(MotionConfig.tiny()), MotionConfig.tiny())
    monkeypatch.setattr(ship, "MAX_MB", 0.001)
    with pytest.raises(UserError, match="under"):
        ship.ship(weights, "motion", [])
    assert not (assets_dir / "motion.safetensors").exists()


def test_an_rl_evaluation_is_recorded_with_its_checks(tmp_path, assets_dir):
    weights = save_checkpoint(tmp_path / "m.safetensors", MotionTransformer(MotionConfig.tiny()), MotionConfig.tiny())
    report = tmp_path / "rl_eval.json"
    report.write_text(json.dumps({"command": "python benchmarks/rl_eval.py --checkpoint m", "audio_dir": "h",
                                  "summary": {"rl": {"tripped": 0.0}}, "rows": [1, 2],
                                  "targets": [{"what": "head yaw std, rad", "met": True}]}))
    entry = ship.ship(weights, "motion", ["avatar rl train --config rl/configs/ship.toml"], report)
    assert entry["evaluation"]["targets"][0]["met"] and "rows" not in entry["evaluation"]
    assert entry["evaluation"]["command"].startswith("python benchmarks/rl_eval.py")
