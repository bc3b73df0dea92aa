import numpy as np
import pytest

from rl.rewards import Sample
from rl.rewards.sync import AlignmentTerm, SyncOptions, SyncTerm
from tests.rl.rewards.conftest import TRANSCRIPT


@pytest.fixture(scope="module")
def sync_term():
    return SyncTerm()  # the shipped expert


def test_in_sync_motion_beats_shifted_and_frozen(sync_term, samples):
    names = ["real", "shifted", "frozen"]
    result = sync_term([samples[n] for n in names])
    v = dict(zip(names, result.values))
    assert v["real"] > v["shifted"] + 0.2 and v["real"] > v["frozen"] + 0.2
    offsets = dict(zip(names, result.diagnostics["offset_frames"]))
    assert abs(offsets["real"]) <= 1 and offsets["shifted"] >= 6  # the 8-frame delay is seen as a lag
    assert result.diagnostics["confidence"][names.index("frozen")] < 0.03


def test_offset_penalty_is_per_frame(samples):
    free, strict = SyncTerm(SyncOptions(offset_penalty=0.0)), SyncTerm(SyncOptions(offset_penalty=0.1))
    a, b = free([samples["shifted"]]), strict([samples["shifted"]])
    assert np.isclose(a.values[0] - b.values[0], 0.1 * abs(a.diagnostics["offset_frames"][0]))


def test_silence_scores_zero(sync_term, clip, motions):
    from engine.audio.frontend import extract_features

    audio = np.zeros(16000, np.float32)
    result = sync_term([Sample(audio, extract_features(audio), motions["real"][:25])])
    assert result.values[0] == 0 and result.diagnostics["has_speech"][0] == 0


def test_a_missing_expert_names_the_file(tmp_path):
    from engine.errors import UserError

    with pytest.raises(UserError, match="nope.safetensors"):
        SyncTerm(SyncOptions(expert=str(tmp_path / "nope.safetensors")))


def test_alignment_rewards_a_mouth_that_follows_the_transcript(clip, motions):
    from train.synth.visemes import mouth_targets

    audio, features = clip
    term = AlignmentTerm()
    first = term([Sample(audio, features, motions["real"], transcript=TRANSCRIPT)])
    phones = term.phones(Sample(audio, features, motions["real"], transcript=TRANSCRIPT))  # cached, not realigned
    assert len(term._phones) == 1 and phones is not None
    corpus_like = mouth_targets(phones, len(features))  # what the corpus trains towards
    cases = {"corpus": corpus_like, "real": motions["real"], "shifted": motions["shifted"], "frozen": motions["frozen"]}
    result = term([Sample(audio, features, m, transcript=TRANSCRIPT) for m in cases.values()])
    v = dict(zip(cases, result.values))
    assert v["corpus"] > 0.6 and v["corpus"] > v["real"] > v["shifted"] and v["frozen"] == 0
    assert np.isclose(first.values[0], v["real"])
    assert result.diagnostics["aligned"].tolist() == [1, 1, 1, 1]
    # no transcript: no alignment, a neutral 0
    none = term([Sample(audio, features, corpus_like)])
    assert none.values[0] == 0 and none.diagnostics["aligned"][0] == 0
