import pytest

from engine.errors import UserError
from engine.stream.presets import PRESETS, Preset, get_preset, latency_floor_s


def test_presets_trade_steps_and_headroom():
    low, balanced, quality = (PRESETS[n] for n in ("low-latency", "balanced", "quality"))
    assert low.steps < balanced.steps < quality.steps
    assert low.headroom_s < balanced.headroom_s < quality.headroom_s
    assert low.baseline_chunk < balanced.baseline_chunk < quality.baseline_chunk
    assert get_preset("balanced") is balanced and get_preset(low) is low


def test_the_floor_is_the_window_plus_the_frontends_lookahead():
    assert latency_floor_s(4, 2) == pytest.approx(0.264)  # the shipped model: 6 frames + 24 ms
    assert latency_floor_s(1, 0) == pytest.approx(0.064)


def test_bad_presets_say_what_is_wrong():
    with pytest.raises(UserError, match="unknown preset 'turbo'; use one of low-latency, balanced, quality"):
        get_preset("turbo")
    with pytest.raises(UserError, match="steps must be a positive integer"):
        Preset("mine", steps=0, render_batch=1, headroom_s=0.1, jitter_s=0.0, baseline_chunk=1)
    with pytest.raises(UserError, match="headroom_s and jitter_s must be >= 0"):
        Preset("mine", steps=1, render_batch=1, headroom_s=-0.1, jitter_s=0.0, baseline_chunk=1)
