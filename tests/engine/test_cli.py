"""The `avatar` command as a user meets it: help that teaches, errors without tracebacks."""

import subprocess
import sys

import numpy as np
import pytest

from engine.io.video import probe


def avatar(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_help_lists_every_command():
    out = avatar("--help")
    assert out.returncode == 0
    for command in ("render", "portrait", "data", "train", "eval"):
        assert command in out.stdout
    assert "examples:" in out.stdout


def test_building_the_parser_imports_no_heavy_package():
    """`avatar --help` stays instant: the parser names presets and emotions without importing torch."""
    code = ("import sys; from engine import cli; cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'cv2', 'mediapipe', 'av') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_the_parser_names_the_stream_presets_backends_and_emotions():
    from engine import cli
    from engine.motion.baseline import EMOTIONS
    from engine.stream.presets import PRESETS
    from engine.backends import BACKENDS

    assert cli.PRESETS == tuple(PRESETS) and sorted(cli.EMOTIONS) == sorted(EMOTIONS) and cli.BACKENDS == BACKENDS


def test_render_help_explains_the_options():
    out = avatar("render", "--help").stdout
    for option in ("--audio", "--portrait", "--out", "--size", "--emotion", "--motion-out"):
        assert option in out


def test_data_synth_help_is_the_corpus_builders():
    out = avatar("data", "synth", "--help")
    assert out.returncode == 0 and "--hours" in out.stdout and "manifest.json" in out.stdout


def test_train_motion_help_is_the_pretrainers():
    out = avatar("train", "motion", "--help")
    assert out.returncode == 0 and "--data" in out.stdout and "--steps" in out.stdout


@pytest.mark.parametrize("command, option", [(("train", "sync"), "--data"), (("data", "human"), "--out"),
                                             (("eval", "lipsync"), "--audio-dir")])
def test_delegated_commands_explain_themselves(command, option):
    out = avatar(*command, "--help")
    assert out.returncode == 0 and option in out.stdout and f"avatar {' '.join(command)}" in out.stdout


def test_eval_lipsync_without_inputs_says_what_to_give():
    out = avatar("eval", "lipsync")
    assert out.returncode == 2 and "--audio-dir" in out.stderr and "Traceback" not in out.stderr


def test_missing_audio_is_a_clear_error(tmp_path):
    out = avatar("render", "--audio", str(tmp_path / "nope.wav"), "--out", str(tmp_path / "x.mp4"))
    assert out.returncode == 1
    assert "nope.wav" in out.stderr and "Traceback" not in out.stderr


def test_photo_without_a_face_is_a_clear_error(tmp_path):
    import cv2

    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((300, 300, 3), 128, np.uint8))
    out = avatar("portrait", str(blank), "--out", str(tmp_path / "check.png"))
    assert out.returncode == 1
    assert "no face found in" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_render_a_short_clip_end_to_end(tmp_path, sample_clip):
    clip = sample_clip(2.0, rate=44100, channels=2)
    out = avatar("render", "--audio", str(clip), "--out", str(tmp_path / "t.mp4"), "--size", "256",
                 "--emotion", "happy", "--motion-out", str(tmp_path / "m.npz"))
    assert out.returncode == 0, out.stderr
    assert "wrote" in out.stdout
    info = probe(tmp_path / "t.mp4")
    assert info.frames == 50 and info.width == 256
    assert (tmp_path / "m.npz").exists()


def test_portrait_check_draws_the_mesh(tmp_path):
    from engine import assets

    out = avatar("portrait", str(assets.DEFAULT_PORTRAIT), "--out", str(tmp_path / "check.png"))
    assert out.returncode == 0, out.stderr
    assert "face" in out.stdout and (tmp_path / "check.png").stat().st_size > 10_000


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA device")
def test_gpu_options_without_a_gpu_say_why_and_what_to_use(tmp_path):
    out = avatar("render", "--device", "cuda", "--out", str(tmp_path / "x.mp4"))
    assert out.returncode == 1 and "--device cpu" in out.stderr and "Traceback" not in out.stderr
    out = avatar("render", "--backend", "tensorrt", "--out", str(tmp_path / "x.mp4"))
    assert out.returncode == 1 and "--backend tensorrt cannot run here" in out.stderr
    assert "--backend onnxruntime" in out.stderr and "Traceback" not in out.stderr
    out = avatar("render", "--backend", "onnxruntime", "--device", "cuda", "--out", str(tmp_path / "x.mp4"))
    assert out.returncode == 1 and "runs on the CPU" in out.stderr
    assert not (tmp_path / "x.mp4").exists()


def test_a_learned_option_with_the_baseline_driver_is_refused_not_ignored(tmp_path):
    for command in (["render", "--out", str(tmp_path / "x.mp4"), "--steps", "2", "--backend", "torch"],
                    ["serve", "--port", "0", "--backend", "onnxruntime"]):
        out = avatar(*command, "--driver", "baseline")
        assert out.returncode == 1 and "--driver baseline runs none" in out.stderr, out.stderr
        assert ("--backend, --steps set" if command[0] == "render" else "--backend set") in out.stderr
    assert not (tmp_path / "x.mp4").exists()
