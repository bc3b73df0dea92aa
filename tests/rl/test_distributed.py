"""The trainer under torchrun: 2 CPU processes (gloo), each rolling out its share of the prompts, rewards gathered
before advantages, gradients averaged; the ranks must end with identical weights."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_stay_in_sync(make_config, tmp_path):
    config = make_config("ddp", train={"steps": 2, "eval_every": 2, "save_every": 2})
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(free_port()), "-m", "engine.cli", "rl", "train", "--config", str(config),
         "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2] and all(r["ranks"] == 2 for r in records[1:])
    # each step checks the ranks' weight fingerprints (rl.grpo.check_in_sync); a drifted run fails above
    assert "ranks out of sync" not in result.stderr
    assert (tmp_path / "ddp" / "rl.safetensors").is_file()


def test_drifted_ranks_are_caught(monkeypatch):
    """check_in_sync compares gathered fingerprints: fed two different ranks' rows, it raises."""
    import numpy as np
    import torch

    from rl import grpo

    monkeypatch.setattr(grpo.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(grpo, "gather_rows", lambda rows: np.concatenate([rows, rows + 1e-7]))
    with pytest.raises(RuntimeError, match="out of sync"):
        grpo.check_in_sync([torch.ones(3)])
    monkeypatch.setattr(grpo, "gather_rows", lambda rows: np.concatenate([rows, rows]))
    grpo.check_in_sync([torch.ones(3)])
