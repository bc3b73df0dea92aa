"""The `avatar` command.

Each subcommand is a thin layer over a library function: parse, validate, call, report.
Heavy imports (torch, mediapipe, av) happen inside the handlers so `avatar --help` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EMOTIONS = ("neutral", "happy", "sad", "angry", "surprise", "fear", "disgust")

EXAMPLES = """\
examples:
  avatar render --audio speech.wav --portrait me.jpg --out talk.mp4
  avatar render                                  # bundled sample speech and portrait -> out/talk.mp4
  avatar render --audio speech.mp3 --emotion happy --motion-out talk.jsonl
  avatar render --driver baseline                # the hand-written driver instead of the learned generator
  avatar portrait me.jpg --out check.png         # will this photo work? shows the face it found
  avatar data synth --out data/synth --hours 1   # synthetic speech + motion corpus for training
  avatar train motion --data data/synth --out ckpt/motion   # pretrain the generator (resumable)
  avatar train sync --data data/synth --out ckpt/sync       # the lip-sync expert (resumable)
  avatar data human --out data/human             # the real human speech available offline, with transcripts
  avatar eval lipsync --audio-dir data/human     # learned vs baseline against forced-aligned phones
"""

# Subcommands owned by other packages, which parse their own arguments (engine never imports them eagerly).
DELEGATED = {
    ("data", "synth"): "train.synth.corpus",
    ("data", "human"): "train.human_speech",
    ("train", "motion"): "train.pretrain",
    ("train", "sync"): "train.sync_expert",
    ("eval", "lipsync"): "train.eval_lipsync",
}


def _add_render(sub) -> None:
    p = sub.add_parser(
        "render",
        help="render a talking-head MP4 from a speech recording and a portrait",
        description="Turn speech and a portrait photo into a lip-synced talking-head MP4 (25 fps, "
        "H.264 + AAC, input audio muxed in: frame n shows samples [640n, 640n+640) at 16 kHz).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--audio", type=Path, help="speech file (wav, flac, mp3, ogg; any rate or channels); "
                   "default: the bundled sample speech")
    p.add_argument("--portrait", type=Path, help="photo with one clearly visible frontal face "
                   "(at least 96 px); default: the bundled portrait")
    p.add_argument("--out", type=Path, default=Path("out/talk.mp4"), help="MP4 to write")
    p.add_argument("--size", type=int, default=512, help="output width and height in pixels (multiple of 16)")
    p.add_argument("--emotion", choices=EMOTIONS, default="neutral", help="expression held through the clip")
    p.add_argument("--expressiveness", type=float, default=1.0, help="scale of mouth and face motion (0-2)")
    p.add_argument("--head-motion", type=float, default=1.0, help="scale of head motion (0 = still head)")
    p.add_argument("--seed", type=int, default=0, help="seed for blinks, head motion and the generator's noise")
    p.add_argument("--driver", choices=("learned", "baseline"), default="learned",
                   help="learned: the flow-matching generator (shipped weights unless --checkpoint); "
                   "baseline: the hand-written loudness/spectrum driver")
    p.add_argument("--checkpoint", type=Path, help="generator weights from `avatar train motion` "
                   "(default: engine/assets/motion.safetensors)")
    p.add_argument("--steps", type=int, default=argparse.SUPPRESS, help="learned driver: Euler sampling steps per chunk, 2-8 (default 4)")
    p.add_argument("--guidance-audio", type=float, default=argparse.SUPPRESS,
                   help="learned driver: classifier-free guidance on the audio; 1 = none, higher = larger lip "
                   "motion and a mouth held closed in silence (default 2)")
    p.add_argument("--guidance-emotion", type=float, default=argparse.SUPPRESS,
                   help="learned driver: classifier-free guidance on the emotion; >1 = stronger expression (default 1)")
    p.add_argument("--motion-out", type=Path, help="also save the motion coefficients (.jsonl or .npz)")
    p.add_argument("--full-photo", action="store_true", help="paste the face back into the whole photo "
                   "instead of the square head-and-shoulders frame")
    p.add_argument("--threads", type=int, default=2, help="torch threads for the renderer")
    p.set_defaults(handler=_render)


def _add_portrait(sub) -> None:
    p = sub.add_parser(
        "portrait",
        help="check a photo: find the face, show the framing and landmarks",
        description="Analyse a portrait the way every command does and draw what was found, "
        "so you can tell before streaming whether a photo will work.",
    )
    p.add_argument("photo", type=Path, help="photo to check")
    p.add_argument("--out", type=Path, default=Path("out/portrait_check.png"), help="annotated PNG to write")
    p.add_argument("--size", type=int, default=512, help="frame size in pixels")
    p.set_defaults(handler=_portrait)


def _render(args) -> None:
    from engine.offline import RenderRequest, render_file

    sampler = {k: getattr(args, k) for k in ("steps", "guidance_audio", "guidance_emotion") if hasattr(args, k)}
    summary = render_file(RenderRequest(
        audio=args.audio, portrait=args.portrait, out=args.out, size=args.size, emotion=args.emotion,
        expressiveness=args.expressiveness, head_motion=args.head_motion, seed=args.seed,
        motion_out=args.motion_out, full_photo=args.full_photo, threads=args.threads, driver=args.driver,
        checkpoint=args.checkpoint, **sampler,
    ))
    print(summary)


def _portrait(args) -> None:
    import cv2

    from engine.face.analysis import analyze_portrait
    from engine.face.rig import Rig

    portrait = analyze_portrait(args.photo, size=args.size)
    rig = Rig(portrait)
    canvas = cv2.cvtColor(portrait.frame, cv2.COLOR_RGB2BGR)
    for tri in rig.triangles:
        cv2.polylines(canvas, [rig.source_points[tri].round().astype("int32")], True, (90, 200, 90), 1, cv2.LINE_AA)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), canvas)
    for note in portrait.notes:
        print(f"note: {note}")
    x0, y0, x1, y1 = portrait.face_box
    print(f"face {x1 - x0}x{y1 - y0} px at ({x0}, {y0}) in {args.photo}; frame {portrait.size}x{portrait.size}; "
          f"mesh and framing drawn to {args.out}")


def _add_group(sub, name: str, help: str, description: str) -> None:
    """A command whose subcommands parse their own arguments (DELEGATED)."""
    p = sub.add_parser(name, help=help, description=description)
    p.set_defaults(handler=lambda args: p.print_help())


def _add_data(sub) -> None:
    _add_group(sub, "data", "make training and evaluation data (avatar data synth --help)",
               "Data. `avatar data synth --help`: the synthetic training corpus; "
               "`avatar data human --help`: real human recordings with transcripts for evaluation.")


def _add_train(sub) -> None:
    _add_group(sub, "train", "train networks (avatar train motion --help)",
               "Training. `avatar train motion --help`: generator pretraining; "
               "`avatar train sync --help`: the lip-sync expert.")


def _add_eval(sub) -> None:
    _add_group(sub, "eval", "evaluate the generator (avatar eval lipsync --help)",
               "Evaluation. `avatar eval lipsync --help`: lip sync against forced-aligned speech, "
               "learned generator vs baseline driver.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avatar",
        description="Real-time talking-avatar engine: a portrait photo and speech in, a lip-synced talking head out.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_render(sub)
    _add_portrait(sub)
    _add_data(sub)
    _add_train(sub)
    _add_eval(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if tuple(argv[:2]) in DELEGATED:
        import importlib

        return importlib.import_module(DELEGATED[tuple(argv[:2])]).main(argv[2:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    from engine.errors import UserError
    from engine.runtime import tune_allocator

    tune_allocator()
    try:
        args.handler(args)
    except UserError as err:
        print(f"avatar {argv[0]}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
