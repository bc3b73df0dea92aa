import numpy as np

from rl.rewards.guards import GuardOptions, GuardTerm


def test_guards_pass_real_motion_and_trip_on_each_hack(samples):
    names = ["real", "frozen", "shaken", "stuck_open"]
    result = GuardTerm()([samples[n] for n in names])
    values = dict(zip(names, result.values))
    tripped = dict(zip(names, result.tripped))
    assert values["real"] == 0 and not tripped["real"]
    for name, guard in (("frozen", "frozen"), ("shaken", "shaking"), ("stuck_open", "stuck_open")):
        assert tripped[name] and values[name] < -0.5, name
        assert result.diagnostics[f"{guard}_tripped"][names.index(name)] == 1
    # each hack trips its own guard, and the healthy motion none
    assert result.diagnostics["shaking_tripped"].tolist() == [0, 0, 1, 0]
    assert result.diagnostics["frozen_tripped"][[0, 2]].tolist() == [0, 0]


def test_penalty_grows_with_the_fault(samples, motions, clip):
    from engine.motion import spec
    from rl.rewards import Sample

    yaw = spec.index("headYaw")
    sway = (-1.0) ** np.arange(len(motions["real"]))
    shakes = []
    for amplitude in (0.01, 0.02, 0.04):
        m = motions["real"].copy()
        m[:, yaw] += amplitude * sway
        shakes.append(Sample(*clip, m))
    values = GuardTerm(GuardOptions(shaking_jitter=0.004))(shakes).values
    assert values[0] > values[1] > values[2]


def test_a_mouth_opening_for_speech_the_vad_has_not_caught_yet_is_not_stuck_open(samples, motions, clip):
    """Silent frames next to speech hold a mouth already moving for it; only a mouth open through a pause,
    0.2 s or more from speech, is stuck."""
    from engine.motion import spec
    from rl.rewards import Sample
    from rl.rewards.guards import PAUSE_MARGIN_FRAMES, pauses

    real = samples["real"]
    pause = pauses(real)
    assert pause.sum() >= 5 and not (pause & real.speech).any()
    edges = real.silence & ~pause  # silent, but within the margin of speech
    assert edges.any()
    jaw = spec.index("jawOpen")
    onset = motions["real"].copy()
    onset[edges, jaw] = 0.6  # wide open just before and after speech
    paused = motions["real"].copy()
    paused[pause, jaw] = 0.3  # open through the pauses
    result = GuardTerm()([Sample(*clip, onset), Sample(*clip, paused)])
    assert result.tripped.tolist() == [False, True]
    assert PAUSE_MARGIN_FRAMES == 5
