"""The target-statistics term: the target itself scores best, and each way of moving unlike it (a still head, a
swinging head, a tremor, a popping mouth, a late mouth, lips that never close) costs, in its own diagnostic."""

import numpy as np
import pytest

from engine.motion import spec
from rl.rewards import Sample
from rl.rewards.target import TargetTerm


@pytest.fixture(scope="module")
def target(motions, clip):
    """The baseline's motion with a slow head sway added (its own head barely moves) and the lips shut for three
    frames in every 15 of speech (p/b/m-like closures)."""
    m = motions["real"].copy()
    t = np.arange(len(m))
    m[(t % 15 < 3) & (clip[1].vad > 0.5), spec.index("jawOpen")] = 0.0
    m[:, spec.index("headYaw")] += 0.03 * np.sin(2 * np.pi * t / 60)
    m[:, spec.index("headPitch")] += 0.02 * np.sin(2 * np.pi * t / 45 + 1)
    return spec.clip(m)


def variants(target: np.ndarray, motions: dict) -> dict[str, np.ndarray]:
    head = [spec.index(n) for n in ("headYaw", "headPitch", "headRoll")]
    still, swinging, tremor, popping = target.copy(), target.copy(), target.copy(), target.copy()
    still[:, head] = target[:, head].mean(0)
    swinging[:, head] = target[:, head].mean(0) + 4 * (target[:, head] - target[:, head].mean(0))
    tremor[:, spec.index("headYaw")] += 0.01 * (-1.0) ** np.arange(len(target))
    jaw = spec.index("jawOpen")
    popping[::5, jaw] += 0.4
    late = np.roll(target, 8, axis=0)
    late[:, head] = target[:, head]  # only the mouth is late
    never_closed = target.copy()
    never_closed[:, jaw] = np.maximum(never_closed[:, jaw], 0.3)
    never_closed[:, spec.index("mouthClose")] = 0.0
    cases = {"target": target, "still": still, "swinging": swinging, "tremor": tremor, "popping": popping,
             "late": late, "never_closed": never_closed}
    return {k: spec.clip(v) for k, v in cases.items()}


def test_the_target_scores_best_and_each_fault_costs_in_its_own_diagnostic(clip, motions, target):
    cases = variants(target, motions)
    result = TargetTerm()([Sample(*clip, m, target=target) for m in cases.values()])
    value = dict(zip(cases, result.values))
    diag = {k: dict(zip(cases, v)) for k, v in result.diagnostics.items()}
    assert max(value, key=value.get) == "target"
    for case in cases:
        if case != "target":
            assert value[case] < value["target"] - 0.1, case
    # too little and too much head motion both cost (a two-sided ratio: no direction can be gamed)
    assert diag["head_std_logratio"]["still"] > 1 and diag["head_std_logratio"]["swinging"] > 1
    assert diag["head_std_logratio"]["target"] == 0
    assert diag["jitter_excess"]["tremor"] > 1 and diag["jitter_excess"]["target"] == 0
    assert diag["roughness_logratio"]["popping"] > 0.3
    assert diag["tracking_r"]["late"] < diag["tracking_r"]["target"] - 0.3
    assert diag["closure_opening"]["never_closed"] > diag["closure_opening"]["target"] + 0.2


def test_samples_without_a_target_score_zero_and_a_wrong_target_is_refused(clip, motions):
    result = TargetTerm()([Sample(*clip, motions["real"])])
    assert result.values.tolist() == [0.0] and result.diagnostics["has_target"].tolist() == [0.0]
    with pytest.raises(ValueError, match="target must be"):
        Sample(*clip, motions["real"], target=motions["real"][:-1])
