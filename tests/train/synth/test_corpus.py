import json
import warnings

import numpy as np
import pytest

from engine.io import sha256_file
from engine.motion import spec
from engine.motion.baseline import EMOTIONS
from engine.timebase import frames_for_samples
from train.synth import corpus, tts
from train.synth.phones import Phone
from train.synth.text import passage, sentence

VOICES = tts.available_voices()
needs_voices = pytest.mark.skipif(not VOICES, reason="no TTS engine installed (apt-get install flite)")
# piper's ONNX graph draws its own noise, so only the other engines reproduce bit for bit.
REPRODUCIBLE = [v for v in VOICES if not v.startswith("piper:")]
SECONDS = 20


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # engines missing here; the test below checks the warning
        path = corpus.synth_corpus(out, hours=SECONDS / 3600, seed=0, progress=False)
    return out, json.loads(path.read_text())


def _shards(out, manifest, split=None):
    return [(s, np.load(out / s["file"])) for s in manifest["shards"] if split in (None, s["split"])]


def test_sentences_are_varied_and_seeded():
    rng = np.random.default_rng(0)
    texts = [sentence(rng) for _ in range(50)]
    assert len(set(texts)) > 45 and all(t[0].isupper() and t[-1] in ".?!" for t in texts)
    assert passage(np.random.default_rng(3), 2) == passage(np.random.default_rng(3), 2)


def test_speech_gate_and_loudness_follow_phones_and_energy():
    phones = [Phone(0.0, 0.2, "SIL"), Phone(0.2, 0.4, "AA"), Phone(0.4, 0.6, "SIL")]
    assert corpus.speech_gate(phones, 15).tolist() == [0] * 5 + [1] * 5 + [0] * 5
    samples = np.zeros(16000 * 6 // 10, np.float32)
    samples[3200:6400] = 0.5
    loud = corpus.loudness(samples, 15)
    assert loud[5:10].min() == 1.0 and loud[:5].max() == 0.0


@needs_voices
def test_pad_silence_shifts_phones_and_keeps_them_contiguous():
    utt = tts.Utterance(np.ones(16000, np.float32), (Phone(0.0, 0.4, "AA"), Phone(0.4, 1.0, "M")), "x:y", "am",
                        1.0, 1.0)
    padded = corpus.pad_silence(utt, 0.5, 0.25)
    assert len(padded.samples) == 16000 + 8000 + 4000 and padded.samples[:8000].max() == 0
    assert [(p.start_s, p.end_s, p.arpabet) for p in padded.phones] == [
        (0.0, 0.5, "SIL"), (0.5, 0.9, "AA"), (0.9, 1.5, "M"), (1.5, 1.75, "SIL")]
    motion = corpus.motion_targets(padded.phones, padded.samples, corpus.ClipStyle("neutral"), np.random.default_rng(0))
    jaw = motion[:, spec.index("jawOpen")]
    assert jaw[:10].max() < 0.02 and jaw[15:20].max() > 0.2  # closed in the lead-in, open on the vowel


def test_manifest_lists_shards_voices_and_hours(built):
    out, manifest = built
    assert manifest["format"] == corpus.FORMAT and manifest["complete"]
    assert manifest["names"] == list(spec.NAMES) and manifest["fps"] == 25 and manifest["sample_rate"] == 16000
    assert manifest["seed"] == 0 and manifest["hours_requested"] == SECONDS / 3600
    assert manifest["hours_written"] * 3600 >= SECONDS
    assert set(manifest["voices"]) == set(VOICES)
    assert manifest["holdout"] == list(corpus.default_holdout(VOICES))
    assert "--hours" in manifest["command"] and "--seed 0" in manifest["command"]
    for s in manifest["shards"]:
        assert (out / s["file"]).is_file() and len(s["sha256"]) == 64
    written = sum(manifest["voice_seconds"].values())
    assert written == pytest.approx(manifest["hours_written"] * 3600, abs=0.1)


@needs_voices
def test_shards_hold_aligned_audio_and_motion_within_bounds(built):
    out, manifest = built
    for _, z in _shards(out, manifest):
        a, m = z["audio_offsets"], z["motion_offsets"]
        assert z["audio"].dtype == np.int16 and z["motion"].dtype == np.float16 and z["motion"].shape[1] == spec.D
        assert a[0] == m[0] == 0 and a[-1] == len(z["audio"]) and m[-1] == len(z["motion"])
        assert len(a) == len(m) == len(z["voice"]) + 1 == len(z["text"]) + 1 == len(z["emotion"]) + 1
        for i in range(len(z["voice"])):
            assert m[i + 1] - m[i] == frames_for_samples(a[i + 1] - a[i])
        motion = z["motion"].astype(np.float32)
        assert np.all(motion >= spec.LOW - 1e-3) and np.all(motion <= spec.HIGH + 1e-3)
        assert set(z["emotion"].tolist()) <= set(range(len(EMOTIONS)))
    clips = [c for s in manifest["shards"] for c in corpus.load_shard(out / s["file"])]
    jaw = np.concatenate([c["motion"][:, spec.index("jawOpen")] for c in clips])
    assert jaw.max() > 0.3  # speech opens the mouth
    assert all(c["text"] and c["audio"].std() > 0 for c in clips)


@needs_voices
def test_held_out_voices_appear_only_in_val_shards(built):
    out, manifest = built
    held = set(manifest["holdout"])
    for s, z in _shards(out, manifest):
        voices = set(z["voice"].tolist())
        assert s["file"].startswith("val_" if s["split"] == "val" else "shard_")
        assert voices <= held if s["split"] == "val" else not voices & held


@needs_voices
def test_rerun_with_the_same_args_is_a_no_op(built):
    out, manifest = built
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = json.loads(corpus.synth_corpus(out, hours=SECONDS / 3600, seed=0, progress=False).read_text())
    assert again == manifest
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    assert all(sha256_file(out / s["file"]) == s["sha256"] for s in manifest["shards"])


@needs_voices
def test_other_args_on_the_same_dir_are_refused(built):
    out, _ = built
    with pytest.raises(ValueError, match="rerun with those arguments"):
        corpus.synth_corpus(out, hours=SECONDS / 3600, seed=1, progress=False)


@pytest.mark.skipif(not REPRODUCIBLE, reason="no deterministic TTS engine installed (apt-get install flite)")
def test_interrupted_build_resumes_to_the_same_corpus_and_seed_decides_it(tmp_path, monkeypatch):
    monkeypatch.setattr(tts, "available_voices", lambda: REPRODUCIBLE)
    monkeypatch.setattr(corpus, "SHARD_S", 3.0)  # several shards from a few seconds
    hours = 12 / 3600
    whole = json.loads(corpus.synth_corpus(tmp_path / "a", hours, seed=5, progress=False).read_text())
    assert len(whole["shards"]) >= 3

    write, calls = corpus._write_shard, []

    def crash_on_third(path, clips):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        write(path, clips)

    monkeypatch.setattr(corpus, "_write_shard", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        corpus.synth_corpus(tmp_path / "b", hours, seed=5, progress=False)
    partial = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert not partial["complete"] and len(partial["shards"]) == 2
    monkeypatch.setattr(corpus, "_write_shard", write)
    resumed = json.loads(corpus.synth_corpus(tmp_path / "b", hours, seed=5, progress=False).read_text())
    assert [s["sha256"] for s in resumed["shards"]] == [s["sha256"] for s in whole["shards"]]

    (tmp_path / "b" / whole["shards"][1]["file"]).unlink()  # a lost shard is rebuilt, and those after it
    rebuilt = json.loads(corpus.synth_corpus(tmp_path / "b", hours, seed=5, progress=False).read_text())
    assert rebuilt == whole | {"command": rebuilt["command"]}

    other = json.loads(corpus.synth_corpus(tmp_path / "c", hours, seed=6, progress=False).read_text())
    assert [s["sha256"] for s in other["shards"]] != [s["sha256"] for s in whole["shards"]]


class _BrokenAdapter(tts.TTSAdapter):
    """An engine that lists voices but cannot run (its binary vanished)."""

    engine = "fake"

    @classmethod
    def voices(cls):
        return ("one", "two")

    def __init__(self, voice):
        raise tts.TTSEngineMissing("fake is not installed; `apt-get install fake`")

    def _synthesize(self, text, rate, pitch):
        raise AssertionError("never reached")


@needs_voices
def test_a_missing_engine_is_skipped_with_one_warning(tmp_path, monkeypatch):
    fast = [v for v in REPRODUCIBLE if v.startswith("flite:")] or VOICES
    monkeypatch.setitem(tts.ADAPTERS, "fake", _BrokenAdapter)
    monkeypatch.setattr(tts, "available_voices", lambda: [*fast, "fake:one", "fake:two"])
    with pytest.warns(UserWarning, match="fake") as record:
        path = corpus.synth_corpus(tmp_path, hours=6 / 3600, seed=0, progress=False)
    assert len([w for w in record if "fake" in str(w.message)]) == 1
    manifest = json.loads(path.read_text())
    assert manifest["complete"] and not any(v.startswith("fake:") for v in manifest["voices"] + manifest["holdout"])


def test_main_teaches_and_rejects_bad_args(capsys):
    with pytest.raises(SystemExit) as done:
        corpus.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "--holdout" in text and "same command again" in text
    with pytest.raises(SystemExit) as done:
        corpus.main(["--out", "x", "--hours", "0", "--seed", "0"])
    assert done.value.code == 2 and "hours must be positive" in capsys.readouterr().err
