"""benchmarks/stage_costs.py: the untrimmed speech graph it compares against computes what `frames` does,
and the report shows every table."""

import torch

from benchmarks import stage_costs
from engine.audio.speech import WhisperEncoder, WhisperEncoderConfig
from engine.timebase import MELS_PER_FRAME, N_MELS


def test_the_whole_window_graph_gives_the_trimmed_encoders_tokens():
    torch.manual_seed(0)
    encoder = WhisperEncoder(WhisperEncoderConfig.tiny())
    mel = torch.randn(2, 10, MELS_PER_FRAME, N_MELS)
    with torch.no_grad():
        assert torch.allclose(stage_costs.WholeWindow(encoder, 3)(mel), encoder.frames(mel, 3), atol=1e-5)


def test_report_has_every_table():
    result = {"command": "python benchmarks/stage_costs.py", "date": "2026-12-06", "calls": 2, "repeats": 1,
              "machine": {"cpu": "x", "cores": 2, "load_average_at_start": 0.1, "onnxruntime": "1", "torch": "2"},
              "batches": [{"streams": 1, "encoder_ms_per_stream": 6.0, "chunk_ms_per_stream": 4.0}],
              "renders": [{"frames": 1, "ms_per_frame": 5.9}],
              "encoder_trim_torch_ms": {"whole window": 9.7, "last block trimmed": 9.2},
              "encoder_trim_onnxruntime_ms": {"whole window": 7.8, "last block trimmed": 7.1, "max_difference": 0.0},
              "cache": {"stages": ["speech encoder"], "alone_ms": [6.1], "in_turn_ms": [7.5]}}
    md = stage_costs.markdown(result)
    for row in ("| 1 | 6.00 | 4.00 |", "| 1 | 5.90 |", "| torch | 9.70 | 9.20 |", "| speech encoder | 6.10 | 7.50 |"):
        assert row in md
