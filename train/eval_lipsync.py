"""Lip-sync evaluation against forced-aligned speech (`avatar eval lipsync`).

For each recording with a transcript (<stem>.wav + <stem>.txt; `avatar data human` gathers the
real human speech available offline), pocketsphinx (its acoustic model and dictionary ship in its
wheel) force-aligns the transcript to phones, and the corpus's own phones -> visemes -> mouth
mapping (train.synth.visemes) turns them into a reference jawOpen track. Each driver (the learned
generator, the baseline) then animates the same audio, and we report per recording:
- r: Pearson correlation of the driver's jawOpen with the reference, frame by frame (25 fps);
- lag_ms: the shift within +-200 ms that maximises r (positive: the mouth moves after the sound);
- sync confidence and offset from the lip-sync expert (train.sync_expert), when one is given.
With --corpus, the held-out voices of a synthetic corpus are scored the same way against their
known motion targets (no alignment needed).

With --rendered, what a viewer sees is scored instead (train.eval_video): each driver's motion is
rendered, the mouth measured in the pixels by FaceMesh and compared with the phones on their
acoustic boundaries (r, best lag, lips on p/b/m, pauses, roughness); corpus clips are then
force-aligned like the recordings.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from engine.audio.frontend import AudioFeatures, extract_features
from engine.audio.io import load_audio
from engine.backends.eager import TorchStep
from engine.errors import UserError
from engine.motion import spec
from engine.motion.baseline import BaselineDriver, BaselineOptions
from engine.motion.learned import LearnedDriver, LearnedOptions, load_generator
from engine.timebase import FPS, SAMPLE_RATE
from train.synth.phones import ARPABET, SIL, Phone, tidy
from train.synth.visemes import mouth_targets

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a")
MAX_LAG = 5  # frames either side searched for the best lag (200 ms)
SPHINX_FPS = 100  # pocketsphinx's frame rate
_JAW = spec.index("jawOpen")

Driver = Callable[[AudioFeatures], np.ndarray]  # features -> (T, D) raw motion


class AlignmentError(RuntimeError):
    """pocketsphinx could not align a transcript to its audio."""


@dataclass(frozen=True)
class Score:
    recording: str
    driver: str
    seconds: float
    r: float  # Pearson r of jawOpen with the reference at lag 0
    lag_ms: float  # lag of the best r within +-MAX_LAG frames
    best_r: float
    sync_confidence: float | None = None
    sync_offset_ms: float | None = None


# --------------------------------------------------------------------------------------- reference


def _words(transcript: str) -> list[str]:
    return re.sub(r"[^a-z' ]+", " ", transcript.lower()).split()


def align(samples: np.ndarray, transcript: str) -> tuple[Phone, ...]:
    """Phones of `transcript` timed against 16 kHz `samples` (pocketsphinx forced alignment)."""
    from pocketsphinx import Decoder

    decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")
    words = _words(transcript)
    unknown = [w for w in words if decoder.lookup_word(w) is None]
    if unknown or not words:
        raise AlignmentError(f"transcript words missing from pocketsphinx's dictionary: {unknown}" if unknown
                             else "empty transcript")
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes()
    decoder.set_align_text(" ".join(words))
    for phone_pass in (False, True):  # words first, then phones within the word alignment
        if phone_pass:
            try:
                decoder.set_alignment()
            except RuntimeError as err:  # the words could not be placed in the audio
                raise AlignmentError(f"the transcript could not be aligned to the audio ({err})") from err
        try:
            decoder.start_utt()
            decoder.process_raw(pcm, full_utt=True)
            decoder.end_utt()
        except RuntimeError as err:  # seen on robotic synthetic voices: the search finds no path
            raise AlignmentError(f"pocketsphinx could not decode the audio against the transcript ({err})") from err
    alignment = decoder.get_alignment()  # (hyp() crashes pocketsphinx 5.1.1 in alignment mode)
    if alignment is None:
        raise AlignmentError("the transcript could not be aligned to the audio (wrong transcript?)")
    phones = [Phone(p.start / SPHINX_FPS, (p.start + p.duration) / SPHINX_FPS, p.name if p.name in ARPABET else SIL)
              for word in alignment for p in word]
    return tidy(phones, len(samples) / SAMPLE_RATE)


def reference_jaw(phones: Sequence[Phone], frames: int) -> np.ndarray:
    """(frames,) jawOpen the viseme mapping gives for these phones (what the corpus trains towards)."""
    return mouth_targets(phones, frames)[:, _JAW]


# ----------------------------------------------------------------------------------------- metrics


def lagged_r(generated: np.ndarray, reference: np.ndarray, max_lag: int = MAX_LAG) -> tuple[float, int, float]:
    """(r at lag 0, best lag in frames, r at the best lag); lag > 0: `generated` trails `reference`."""
    def r(lag: int) -> float:
        g = generated[lag:] if lag >= 0 else generated[:lag]
        ref = reference[: len(reference) - lag] if lag >= 0 else reference[-lag:]
        if len(g) < 3 or g.std() == 0 or ref.std() == 0:
            return float("nan")
        return float(np.corrcoef(g, ref)[0, 1])

    rs = {lag: r(lag) for lag in range(-max_lag, max_lag + 1)}
    finite = {lag: v for lag, v in rs.items() if np.isfinite(v)}
    best = max(finite, key=finite.get) if finite else 0
    return rs[0], best, rs.get(best, float("nan"))


def score(name: str, driver_name: str, driver: Driver, features: AudioFeatures, reference: np.ndarray,
          expert=None) -> Score:
    motion = driver(features)
    r0, lag, best = lagged_r(motion[:, _JAW], reference)
    sync = {}
    if expert is not None:
        from train.sync_expert import sync_offsets

        result = sync_offsets(expert, features, motion)
        sync = {"sync_confidence": float(result.confidence), "sync_offset_ms": float(result.offset_ms)}
    return Score(name, driver_name, len(features) / FPS, r0, 1000 * lag / FPS, best, **sync)


# ------------------------------------------------------------------------------------------- inputs


def recordings(audio_dir: Path) -> list[tuple[str, np.ndarray, str]]:
    """(name, 16 kHz samples, transcript) for every audio file in `audio_dir` that has a <stem>.txt."""
    if not audio_dir.is_dir():
        raise UserError(f"--audio-dir {audio_dir} is not a folder; gather one with `avatar data human --out DIR`")
    out = []
    for path in sorted(p for p in audio_dir.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES):
        text = path.with_suffix(".txt")
        if not text.is_file():
            print(f"warning: {path.name} has no transcript {text.name}; skipped", file=sys.stderr)
            continue
        out.append((path.stem, load_audio(path), text.read_text().strip()))
    if not out:
        raise UserError(f"{audio_dir} holds no audio file ({', '.join(AUDIO_SUFFIXES)}) with a <stem>.txt "
                        "transcript; gather one with `avatar data human --out DIR`")
    return out


def evaluate_human(audio_dir: Path, drivers: dict[str, Driver], expert=None) -> list[Score]:
    scores = []
    for name, samples, transcript in tqdm(recordings(audio_dir), desc="recordings", leave=False):
        try:
            phones = align(samples, transcript)
        except AlignmentError as err:
            print(f"warning: {name}: {err}; skipped", file=sys.stderr)
            continue
        features = extract_features(samples)
        reference = reference_jaw(phones, len(features))
        scores += [score(name, d, fn, features, reference, expert) for d, fn in drivers.items()]
    return scores


def evaluate_corpus(corpus: Path, drivers: dict[str, Driver], expert=None, limit: int = 20) -> list[Score]:
    """Held-out voices of a synthetic corpus, against their own motion targets (the first `limit` clips)."""
    from train.dataset import load_clips

    scores = []
    for i, clip in enumerate(tqdm(load_clips(corpus, "val")[:limit], desc="held-out clips", leave=False)):
        name = f"val{i:03d}:{clip.voice}"
        scores += [score(name, d, fn, clip.features, clip.motion[:, _JAW], expert) for d, fn in drivers.items()]
    return scores


# ------------------------------------------------------------------------------------------- report


def summary(scores: Sequence[Score]) -> dict[str, dict[str, float]]:
    """Per driver: medians (and the r range) over recordings."""
    out = {}
    for driver in dict.fromkeys(s.driver for s in scores):
        rows = [s for s in scores if s.driver == driver]
        r = np.array([s.r for s in rows])
        out[driver] = {"recordings": len(rows), "median_r": float(np.nanmedian(r)), "min_r": float(np.nanmin(r)),
                       "max_r": float(np.nanmax(r)), "median_lag_ms": float(np.median([s.lag_ms for s in rows]))}
        conf = [s.sync_confidence for s in rows if s.sync_confidence is not None]
        if conf:
            out[driver]["median_sync_confidence"] = float(np.median(conf))
            out[driver]["median_sync_offset_ms"] = float(np.median([s.sync_offset_ms for s in rows]))
    return out


def markdown(title: str, scores: Sequence[Score]) -> str:
    lines = [f"### {title}", "", "| driver | recordings | median r (min-max) | median best lag | sync confidence | sync offset |",
             "|---|---|---|---|---|---|"]
    for driver, s in summary(scores).items():
        conf = f"{s['median_sync_confidence']:.2f}" if "median_sync_confidence" in s else "-"
        off = f"{s['median_sync_offset_ms']:+.0f} ms" if "median_sync_offset_ms" in s else "-"
        lines.append(f"| {driver} | {s['recordings']} | {s['median_r']:.2f} ({s['min_r']:.2f}-{s['max_r']:.2f}) | "
                     f"{s['median_lag_ms']:+.0f} ms | {conf} | {off} |")
    lines += ["", "<details><summary>per recording</summary>", "",
              "| recording | driver | s | r | best lag | r at best lag | sync conf. | sync offset |",
              "|---|---|---|---|---|---|---|---|"]
    for s in scores:
        conf = "-" if s.sync_confidence is None else f"{s.sync_confidence:.2f}"
        off = "-" if s.sync_offset_ms is None else f"{s.sync_offset_ms:+.0f}"
        lines.append(f"| {s.recording} | {s.driver} | {s.seconds:.1f} | {s.r:.2f} | {s.lag_ms:+.0f} | "
                     f"{s.best_r:.2f} | {conf} | {off} |")
    return "\n".join(lines + ["", "</details>", ""])


DRIVER_SETS = {"learned": ("learned",), "fast": ("fast",), "baseline": ("baseline",),
               "both": ("learned", "baseline"), "all": ("learned", "fast", "baseline")}


def make_drivers(which: str, checkpoint: Path | None, seed: int,
                 guidance: Sequence[float] = (LearnedOptions.guidance_audio,)) -> dict[str, Driver]:
    """Drivers by name; several audio guidance scales give one learned driver each ("learned g=1.5");
    "fast" is the live presets' generator (engine/assets/motion_fast.safetensors)."""
    from engine import assets

    drivers: dict[str, Driver] = {}
    names = DRIVER_SETS[which]
    if "learned" in names:
        model = TorchStep(load_generator(checkpoint))
        for g in guidance:
            name = "learned" if len(guidance) == 1 else f"learned g={g:g}"
            drivers[name] = LearnedDriver(model, LearnedOptions(seed=seed, guidance_audio=g)).drive
    if "fast" in names:
        options = LearnedOptions(seed=seed, guidance_audio=guidance[0])
        drivers["fast"] = LearnedDriver(TorchStep(load_generator(assets.FAST_MOTION)), options).drive
    if "baseline" in names:
        drivers["baseline"] = BaselineDriver(BaselineOptions(seed=seed)).drive
    return drivers


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="avatar eval lipsync", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: avatar data human --out data/human && "
               "avatar eval lipsync --audio-dir data/human --sync-expert engine/assets/sync_expert.safetensors")
    parser.add_argument("--audio-dir", type=Path, help="recordings (<stem>.wav) with transcripts (<stem>.txt)")
    parser.add_argument("--corpus", type=Path, help="also score the held-out voices of this synthetic corpus")
    parser.add_argument("--clips", type=int, default=20, help="held-out corpus clips to score (20)")
    parser.add_argument("--driver", choices=tuple(DRIVER_SETS), default="both",
                        help="both = learned and baseline; all = learned, fast (the live presets') and baseline")
    parser.add_argument("--rendered", action="store_true", help="score the rendered video: the mouth measured by "
                        "FaceMesh in every frame against phones on their acoustic boundaries (train.eval_video)")
    parser.add_argument("--portrait", type=Path, help="--rendered: the face to render (default: the bundled one)")
    parser.add_argument("--size", type=int, default=512, help="--rendered: frame size in pixels (512)")
    parser.add_argument("--checkpoint", type=Path, help="generator weights (default: the shipped ones)")
    parser.add_argument("--sync-expert", type=Path, help="lip-sync expert weights (avatar train sync) for "
                        "sync confidence and offset")
    parser.add_argument("--guidance-audio", type=float, nargs="+", default=[LearnedOptions.guidance_audio],
                        help="audio guidance scale(s) of the learned driver; several values compare them "
                        f"(default {LearnedOptions.guidance_audio:g})")
    parser.add_argument("--seed", type=int, default=0, help="seed of both drivers (blinks, head, noise)")
    parser.add_argument("--out", type=Path, help="write the scores here as JSON and Markdown (<out>.json, <out>.md)")
    args = parser.parse_args(argv)
    if args.audio_dir is None and args.corpus is None:
        parser.error("give --audio-dir (real recordings with transcripts) and/or --corpus (a synthetic corpus)")
    started = time.monotonic()
    drivers = make_drivers(args.driver, args.checkpoint, args.seed, args.guidance_audio)
    expert = None
    if args.sync_expert is not None:
        from train.sync_expert import load_expert

        expert = load_expert(args.sync_expert)
    if args.rendered:
        return _main_rendered(args, drivers, argv, started)
    sections = {}
    if args.audio_dir is not None:
        sections[f"human speech ({args.audio_dir})"] = evaluate_human(args.audio_dir, drivers, expert)
    if args.corpus is not None:
        sections[f"held-out synthetic voices ({args.corpus})"] = evaluate_corpus(args.corpus, drivers, expert,
                                                                                  args.clips)
    text = "\n".join(markdown(title, scores) for title, scores in sections.items())
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        command = "avatar eval lipsync " + shlex.join(sys.argv[1:] if argv is None else argv)
        payload = {"command": command, "sections": {t: {"summary": summary(s), "scores": [asdict(x) for x in s]}
                                                    for t, s in sections.items()}}
        Path(f"{args.out}.json").write_text(json.dumps(payload, indent=1) + "\n")
        Path(f"{args.out}.md").write_text(f"Command: `{command}`\n\n{text}")
    print(f"done in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


def aligned_recordings(audio_dir: Path) -> list[tuple[str, AudioFeatures, tuple[Phone, ...]]]:
    """(name, features, phones) of every recording whose transcript pocketsphinx could align."""
    out = []
    for name, samples, transcript in tqdm(recordings(audio_dir), desc="aligning", leave=False):
        try:
            out.append((name, extract_features(samples), align(samples, transcript)))
        except AlignmentError as err:
            print(f"warning: {name}: {err}; skipped", file=sys.stderr)
    return out


def aligned_corpus(corpus: Path, limit: int) -> list[tuple[str, AudioFeatures, tuple[Phone, ...]]]:
    """The first `limit` held-out corpus clips that pocketsphinx can align to their text."""
    from train.dataset import load_clips
    from train.synth.corpus import load_shard

    manifest = json.loads((corpus / "manifest.json").read_text())
    audio = [c["audio"] for s in manifest["shards"] if s["split"] == "val" for c in load_shard(corpus / s["file"])]
    out = []
    for i, (clip, samples) in enumerate(zip(load_clips(corpus, "val"), audio)):
        if len(out) == limit:
            break
        try:
            out.append((f"val{i:03d}:{clip.voice}", clip.features, align(samples, clip.text)))
        except AlignmentError:
            continue  # robotic voices defeat the aligner now and then
    return out


def _main_rendered(args, drivers: dict[str, Driver], argv, started: float) -> int:
    from engine import assets
    from engine.face.analysis import analyze_portrait
    from engine.face.rig import Rig
    from engine.render.renderer import Renderer
    from train import eval_video

    renderer = Renderer(Rig(analyze_portrait(args.portrait or assets.DEFAULT_PORTRAIT, size=args.size))).eval()
    sections = {}
    if args.audio_dir is not None:
        items = aligned_recordings(args.audio_dir)
        sections[f"human speech ({args.audio_dir}), rendered"] = eval_video.evaluate_rendered(items, drivers, renderer,
                                                                                              tqdm)
    if args.corpus is not None:
        items = aligned_corpus(args.corpus, args.clips)
        sections[f"held-out synthetic voices ({args.corpus}), rendered"] = eval_video.evaluate_rendered(
            items, drivers, renderer, tqdm)
    text = "\n".join(eval_video.markdown(title, scores) for title, scores in sections.items())
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        command = "avatar eval lipsync " + shlex.join(sys.argv[1:] if argv is None else argv)
        payload = {"command": command, "sections": {t: {"summary": eval_video.summary(s),
                                                        "scores": [asdict(x) for x in s]}
                                                    for t, s in sections.items()}}
        Path(f"{args.out}.json").write_text(json.dumps(payload, indent=1) + "\n")
        Path(f"{args.out}.md").write_text(f"Command: `{command}`\n\n{text}")
    print(f"done in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
