import numpy as np

from rl.rewards import Sample
from rl.rewards.temporal import TemporalTerm, flicker, roughness


def test_roughness_matches_the_video_evaluation():
    from train.eval_video import roughness as video_roughness

    x = np.sin(np.linspace(0, 9, 80)) + 0.1 * np.random.default_rng(0).normal(size=80)
    assert roughness(x) == video_roughness(x)


def test_smooth_real_motion_costs_nothing_popping_mouth_and_shaking_head_do(samples):
    names = ["real", "popping", "shaken", "frozen"]
    result = TemporalTerm()([samples[n] for n in names])
    v = dict(zip(names, result.values))
    assert v["real"] == 0 and v["frozen"] == 0  # smoother than speech is the guards' business
    assert v["popping"] < -0.5 and v["shaken"] < -0.3
    d = {k: dict(zip(names, x)) for k, x in result.diagnostics.items()}
    assert d["mouth_roughness"]["popping"] > 2 * d["mouth_roughness"]["real"]
    assert d["head_jitter"]["shaken"] > 5 * d["head_jitter"]["real"]


def test_aligned_phones_give_the_reference_roughness(clip, motions):
    from train.synth.phones import Phone

    audio, features = clip
    seconds = len(audio) / 16000
    # a vowel every 0.3 s: a busier reference than the default tolerates more roughness
    busy = tuple(Phone(t, t + 0.15, "AA" if i % 2 else "M") for i, t in enumerate(np.arange(0, seconds - 0.15, 0.15)))
    plain = Sample(audio, features, motions["popping"])
    with_phones = Sample(audio, features, motions["popping"], phones=busy)
    r = TemporalTerm()([plain, with_phones]).diagnostics["mouth_roughness"]
    assert r[1] < r[0]


def test_flicker_on_pixels(rendered, clip, motions):
    frames = rendered["real"]
    flipped = frames.copy()
    flipped[::2] = np.clip(flipped[::2].astype(int) + 40, 0, 255).astype(np.uint8)  # brightness flips each frame
    noisy = np.clip(frames + np.random.default_rng(0).normal(0, 8, frames.shape), 0, 255).astype(np.uint8)
    assert flicker(frames) < 1.0 and 1.3 < flicker(noisy) < flicker(flipped)
    term = TemporalTerm()
    batch = [Sample(clip[0][:16000], clip[1][:25], motions["real"][:25], frames=f) for f in (frames, noisy, flipped)]
    values = term(batch).values
    assert values[0] == 0 > values[1] > values[2]
    assert flicker(np.repeat(frames[:1], 5, 0)) == 0
