"""benchmarks/suite.py, `avatar bench`: a short run over two backends writes its JSON, Markdown and plot
with consistent values; bad options and a backend this machine cannot run fail at once, saying why.

Structure only: nothing asserts on speed (timings mean nothing on shared CI cores).
"""

import json
import subprocess
import sys

import cv2
import pytest
import torch

from benchmarks import suite
from engine import cli


def bench(*args: str) -> int:
    threads = torch.get_num_threads()
    try:
        return cli.main(["bench", *args])
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow  # real time: two backends x ~6 s of streams, plus the clip's stages (~40 s in all)
def test_a_short_run_writes_json_markdown_and_plot(tmp_path):
    out = tmp_path / "bench"
    assert bench("--backend", "torch", "onnxruntime", "--preset", "low-latency", "--seconds", "3.5",
                 "--starts", "0", "--repeats", "2", "--size", "128", "--out", str(out)) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["command"].startswith("avatar bench --backend torch onnxruntime")
    assert list(result["backends"]) == ["torch", "onnxruntime"] and result["renderer_px"] == 128
    for b in result["backends"].values():
        (live,) = b["presets"]
        latency = live["run"]["engine_latency_ms"]
        assert live["preset"] == "low-latency" and latency["p50"] <= latency["p95"] <= latency["p99"]
        assert latency["p50"] > live["floor_ms"] - 20 and live["run"]["frames"] > 0  # the floor, less a packet
        stages = b["stages"]["low-latency"]
        assert set(stages["ms_per_chunk"]) == set(suite.STAGES)
        assert all(s["runs"] == 2 and 0 < s["min"] <= s["median"] <= s["max"] for s in stages["ms_per_chunk"].values())
        # the speech encoder also runs inside the generator's step: shown, not added
        total = sum(s["median"] for name, s in stages["ms_per_chunk"].items() if name not in suite.IN_GENERATOR)
        assert stages["total_ms_per_chunk"] == pytest.approx(total)
        assert stages["frames_per_s"] == pytest.approx(stages["chunk"] * 1000 / total)
        assert stages["x_real_time"] == pytest.approx(stages["frames_per_s"] / 25)
    md = out.with_suffix(".md").read_text()
    assert f"`{result['command']}`" in md
    assert md.count("\n| torch | low-latency |") == 2 and md.count("\n| onnxruntime | low-latency |") == 2
    image = cv2.imread(str(out.with_suffix(".png")))
    assert image is not None and image.shape[0] > 300 and image.shape[1] > 600


def test_a_backend_this_machine_cannot_run_fails_before_any_work(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: tensorrt may run here")
    with pytest.raises(SystemExit) as stop:
        bench("--backend", "tensorrt", "--out", str(tmp_path / "b"))
    assert "tensorrt" in str(stop.value) and "onnxruntime" in str(stop.value)  # the fix on a CPU
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args, message", [(["--seconds", "2"], "--seconds must exceed 3"),
                                           (["--repeats", "0"], "--repeats"),
                                           (["--preset", "fastest"], "invalid choice")])
def test_bad_options_are_refused_with_what_to_pass(args, message, capsys):
    with pytest.raises(SystemExit) as stop:
        bench(*args)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_help_needs_no_torch():
    code = "import sys; from engine.cli import main\ntry: main(['bench', '--help'])\nexcept SystemExit: pass\n" \
           "print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "usage: avatar bench" in done.stdout and done.stdout.strip().endswith("False"), done.stderr
