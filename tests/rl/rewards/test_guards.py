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
