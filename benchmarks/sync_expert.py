"""The lip-sync expert on speech-encoder features against the log-mel one it replaced (issue 12).

Both are scored the same way:
- held-out synthetic voices: the training validation (train.sync_expert.offset_accuracy: each 1 s segment of a
  val clip's motion shifted by -9..9 frames, the shift searched over +-15);
- real human speech (evaluation only, never trained or tuned on): each recording driven by the shipped learned
  generator (engine/assets/motion.safetensors, seed 0), then
  * the offset and confidence the expert gives that motion (in sync: offset ~0, confidence high),
  * the confidence it gives another recording's motion (a control: no sync, confidence ~0),
  * the motion shifted by +-3, 6, 9 frames: found when the offset moves by the shift from the unshifted one,
  * the 1 s segment search of the validation, on the human recordings (assuming the generator is in sync).
The log-mel expert's code and weights are read from a git revision (--baseline-rev), so it runs as shipped.

    python benchmarks/sync_expert.py --new /work/runs/ckpt_sync_whisper/sync_expert.safetensors \\
        --data /work/runs/synth --audio-dir /work/main/data/human_heldout --audio-dir /work/main/data/human
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

from benchmarks.common import cpu_name, fmt, progress, run_benchmark, table
from engine.audio.frontend import extract_features
from engine.errors import UserError

SCRIPT = "benchmarks/sync_expert.py"
SHIFTS = (-9, -6, -3, 3, 6, 9)
BASELINE_REV = "4858255"  # the last commit whose expert reads log-mel


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new", type=Path, required=True, help="the speech-feature expert (sync_expert.safetensors)")
    parser.add_argument("--baseline-rev", default=BASELINE_REV,
                        help=f"git revision whose train/sync_expert.py and engine/assets/sync_expert.safetensors "
                             f"are the log-mel expert ({BASELINE_REV})")
    parser.add_argument("--data", type=Path, required=True, help="synthetic corpus: its val split's voices are held out")
    parser.add_argument("--audio-dir", type=Path, action="append", default=[],
                        help="human recordings with <stem>.txt transcripts (evaluation only); repeatable")
    parser.add_argument("--segment", type=int, default=25, help="frames per shift-search segment (25: 1 s)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sync_expert"))
    return parser.parse_args(argv)


def _git(*args: str) -> bytes:
    return subprocess.run(["git", *args], check=True, capture_output=True).stdout


def baseline(rev: str):
    """(module, expert): the log-mel expert's code and weights as they were at `rev`."""
    name = "sync_expert_logmel"
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses resolve their module by name
    exec(compile(_git("show", f"{rev}:train/sync_expert.py"), f"{rev}:train/sync_expert.py", "exec"), module.__dict__)
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
        f.write(_git("show", f"{rev}:engine/assets/sync_expert.safetensors"))
        f.flush()
        return module, module.load_expert(f.name)


class _Clip:
    def __init__(self, features, motion):
        self.features, self.motion = features, motion


def human_clips(audio_dirs: list[Path]) -> list[tuple[str, _Clip]]:
    """(name, clip) for every recording, its motion from the shipped learned generator (seed 0)."""
    from engine import assets
    from engine.motion.learned import LearnedDriver, LearnedOptions, load_generator
    from train.eval_lipsync import recordings

    drive = LearnedDriver(load_generator(assets.DEFAULT_MOTION), LearnedOptions(seed=0)).drive
    out = []
    for directory in audio_dirs:
        for name, samples, _ in recordings(directory):
            features = extract_features(samples)
            out.append((f"{directory.name}/{name}", _Clip(features, drive(features))))
            progress(f"drove {directory.name}/{name} ({len(features) / 25:.1f} s)")
    return out


def score(module, expert, val_clips, val_tracks, humans, segment: int) -> dict:
    """The held-out-voice validation and the human-speech checks for one expert."""
    kwargs = {} if val_tracks is None else {"tracks": val_tracks}
    val = module.offset_accuracy(expert, val_clips, segment, **kwargs)
    rows, found, errors = [], [], []
    for i, (name, clip) in enumerate(humans):
        base = module.sync_offsets(expert, clip.features, clip.motion)
        other = humans[(i + 1) % len(humans)][1].motion  # another recording's motion, cut or held to this length
        other = other[np.clip(np.arange(len(clip.motion)), 0, len(other) - 1)]
        control = module.sync_offsets(expert, clip.features, other)
        for shift in SHIFTS:
            r = module.sync_offsets(expert, clip.features, module.shift_motion(clip.motion, shift))
            errors.append(abs(r.offset_frames - base.offset_frames - shift))
        rows.append({"recording": name, "seconds": len(clip.features) / 25, "offset_ms": base.offset_ms,
                     "confidence": base.confidence, "control_confidence": control.confidence})
        found.append(base.offset_frames)
    errors = np.array(errors)
    segments = module.offset_accuracy(expert, [c for _, c in humans], segment)
    return {
        "val": val,
        "human": {
            "recordings": rows,
            "median_offset_ms": float(np.median([r["offset_ms"] for r in rows])),
            "mean_confidence": float(np.mean([r["confidence"] for r in rows])),
            "mean_control_confidence": float(np.mean([r["control_confidence"] for r in rows])),
            "shift_found": float(np.mean(errors == 0)), "shift_within_1": float(np.mean(errors <= 1)),
            "shifts_tried": len(errors), "segments": segments,
        },
    }


def run(args, command: str) -> dict:
    from train import sync_expert as sx
    from train.dataset import load_clips

    if not args.audio_dir:
        raise UserError("give at least one --audio-dir of human recordings")
    old_module, old = baseline(args.baseline_rev)
    new = sx.load_expert(args.new)
    val_clips, val_tracks = sx.clip_tracks(args.data, "val", new.config)
    humans = human_clips(args.audio_dir)
    experts = {
        f"log-mel ({args.baseline_rev})": score(old_module, old, load_clips(args.data, "val"), None, humans,
                                               args.segment),
        "speech features (new)": score(sx, new, val_clips, val_tracks, humans, args.segment),
    }
    return {"command": command, "cpu": cpu_name(), "data": str(args.data),
            "audio_dirs": [str(d) for d in args.audio_dir], "new": str(args.new), "experts": experts}


def markdown(result: dict) -> str:
    lines = [f"Command: `{result['command']}`", "",
             (f"Held-out voices: the val split of {result['data']}. Human speech (evaluation only): "
              f"{', '.join(result['audio_dirs'])}, driven by the shipped learned generator (seed 0)."),
             ("Shifts are found when the offset moves by the shift from the unshifted motion's; the 1 s segments "
              "assume the generator is in sync. The log-mel expert was trained on an earlier corpus whose mouth "
              "targets led their sound by 40 ms, so it calls in-sync motion +1 frame (+40 ms): exact offsets "
              "rarely, within one frame mostly."), ""]
    rows = []
    for name, r in result["experts"].items():
        v, h = r["val"], r["human"]
        rows.append([name, fmt(v["accuracy"], ".3f"), fmt(v["within_1"], ".3f"), fmt(v["error"], ".2f"),
                     f"{h['median_offset_ms']:+.0f}", fmt(h["mean_confidence"], ".3f"),
                     fmt(h["mean_control_confidence"], ".3f"),
                     f"{h['shift_found']:.3f} / {h['shift_within_1']:.3f} ({h['shifts_tried']})",
                     (f"{fmt(h['segments']['accuracy'], '.3f')} / {fmt(h['segments']['within_1'], '.3f')} "
                      f"({h['segments']['segments']})")])
    lines += table(["expert", "val offset found", "val within 1 frame", "val mean error (frames)",
                    "human: median offset of the generator (ms)", "human: confidence in sync",
                    "human: confidence, another recording's motion", "human: +-3..9 shifts found / within 1",
                    "human: 1 s segments found / within 1"], rows)
    lines += ["", "Per recording (offset ms, confidence; control = another recording's motion):", ""]
    names = list(result["experts"])
    per = [r["human"]["recordings"] for r in result["experts"].values()]
    lines += table(["recording", "s", *(f"{n}: offset / conf / control" for n in names)],
                   [[a["recording"], f"{a['seconds']:.1f}",
                     *(f"{x['offset_ms']:+d} / {x['confidence']:.3f} / {x['control_confidence']:.3f}" for x in xs)]
                    for a, *xs in zip(per[0], *per)])
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    return run_benchmark("sync_expert", SCRIPT, argv, parse_args, run, markdown)


if __name__ == "__main__":
    main()
