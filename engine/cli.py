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
# engine.stream.presets.PRESETS' names and engine.backends.BACKENDS (a test keeps them equal): importing
# either would pull in torch
PRESETS = ("low-latency", "balanced", "quality")
BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")


def _driver(args):
    """--driver and the learned generator's options as one typed choice; a learned-only option given with
    --driver baseline is an error, not ignored."""
    from engine.errors import UserError
    from engine.motion.choice import Baseline, Learned

    names = ("checkpoint", "backend", "steps", "guidance_audio", "guidance_emotion")
    learned = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if args.driver == "learned":
        return Learned(**learned)
    if learned:
        flags = ", ".join("--" + n.replace("_", "-") for n in learned)
        raise UserError(f"{flags} set the learned generator, and --driver baseline runs none: drop "
                        f"{'them' if len(learned) > 1 else 'it'} or use --driver learned")
    return Baseline()


def _prepare():
    """What makes the exported backends' graphs (export/ builds artifacts; only this module hands it to engine/)."""
    from export.runtime import prepare

    return prepare

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
  avatar rl train --config rl/configs/rl.toml   # GRPO post-training of the generator (resumable)
  avatar data human --out data/human             # the real human speech available offline, with transcripts
  avatar eval lipsync --audio-dir data/human --rendered --driver all   # lip sync measured in the rendered video
  avatar serve                                   # talk to the avatar: open http://127.0.0.1:8080/
  avatar live --portrait me.jpg                  # your microphone drives it; viewers open the page
  avatar live --publish-whip http://sfu:7080/whip/endpoint/avatar --whip-token T   # and to an SFU's viewers
  avatar client ws://127.0.0.1:8080/ws --audio speech.wav --record out/reply.mp4
  avatar export onnx --out out/onnx               # ONNX graphs of generator and renderer, checked against torch
  avatar render --backend onnxruntime             # the generator on ONNX Runtime (exported once, cached)
  avatar serve --device cuda                      # on an NVIDIA GPU: torch, the chunk step as a CUDA graph
  avatar export tensorrt --onnx out/onnx --out out/trt   # TensorRT engines (builds on a CPU too)
  avatar bench --backend torch onnxruntime        # fps, latency and per-stage cost -> out/bench.md/.json/.png
"""

# Subcommands owned by other packages, which parse their own arguments (engine never imports them eagerly).
DELEGATED = {
    ("data", "synth"): "train.synth.corpus",
    ("data", "human"): "train.human_speech",
    ("train", "motion"): "train.pretrain",
    ("train", "sync"): "train.sync_expert",
    ("eval", "lipsync"): "train.eval_lipsync",
    ("rl", "train"): "rl.grpo",
    ("client",): "client.cli",
    ("export", "onnx"): "export.onnx",
    ("export", "tensorrt"): "export.tensorrt",
    ("bench",): "benchmarks.suite",
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
                   "motion and a mouth held closed in silence (default: the weights' own, 2 for pretrained ones, 1 for "
                   "weights post-trained without guidance)")
    p.add_argument("--guidance-emotion", type=float, default=argparse.SUPPRESS,
                   help="learned driver: classifier-free guidance on the emotion; >1 = stronger expression (default 1)")
    p.add_argument("--motion-out", type=Path, help="also save the motion coefficients (.jsonl or .npz)")
    p.add_argument("--full-photo", action="store_true", help="paste the face back into the whole photo "
                   "instead of the square head-and-shoulders frame")
    p.add_argument("--threads", type=int, default=2, help="torch and OpenCV threads")
    _add_backend(p)
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

    summary = render_file(RenderRequest(
        audio=args.audio, portrait=args.portrait, out=args.out, size=args.size, emotion=args.emotion,
        expressiveness=args.expressiveness, head_motion=args.head_motion, seed=args.seed,
        motion_out=args.motion_out, full_photo=args.full_photo, threads=args.threads, driver=_driver(args),
        device=args.device, prepare=_prepare(),
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


def _add_rl(sub) -> None:
    _add_group(sub, "rl", "RL post-training of the generator (avatar rl train --help)",
               "RL post-training. `avatar rl train --config rl.toml`: GRPO with the composite reward "
               "(rl/rewards), or reward-free with --objective dpo; resumable; torchrun for several processes.")


def _add_eval(sub) -> None:
    _add_group(sub, "eval", "evaluate the generator (avatar eval lipsync --help)",
               "Evaluation. `avatar eval lipsync --help`: lip sync against forced-aligned speech, "
               "learned generator vs baseline driver; --rendered measures the mouth in the rendered video.")


def _add_backend(p) -> None:
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="where the generator runs: auto picks ONNX Runtime on a CPU and TensorRT (or, without its "
                   "runtime, torch's CUDA graph) on a GPU; torch; ONNX Runtime, the fastest on a CPU (its graphs are "
                   "exported on first use and cached; see `avatar export onnx`); or TensorRT on an NVIDIA GPU (the "
                   "same graphs built into engines on first use). The renderer runs on torch. Default: auto")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="torch's device for the renderer and a torch generator; on cuda the generator's "
                   "per-chunk step is replayed from a CUDA graph")


def _add_server_options(p, sessions_help: str) -> None:
    """What `serve` and `live` share: where to listen, the avatar, the preset, the controls, ICE."""
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 opens it to the network, "
                   "unauthenticated and without TLS: beyond a trusted LAN put an HTTPS proxy with a login in front "
                   "(browsers allow the microphone only on localhost or behind HTTPS)")
    p.add_argument("--port", type=int, default=8080, help="one port for the page, signaling and /health")
    p.add_argument("--portrait", type=Path, help="photo to animate (default: the bundled portrait)")
    p.add_argument("--size", type=int, default=512, help="video width and height in pixels (multiple of 16)")
    p.add_argument("--preset", choices=PRESETS, default="balanced",
                   help="latency preset: low-latency, balanced or quality (see engine/stream/presets.py)")
    p.add_argument("--driver", choices=("learned", "baseline"), default="learned",
                   help="learned: the shipped generator; baseline: the hand-written driver")
    p.add_argument("--emotion", choices=EMOTIONS, default="neutral", help="starting expression")
    p.add_argument("--expressiveness", type=float, default=1.0, help="starting scale of face motion (0-2)")
    p.add_argument("--head-motion", type=float, default=1.0, help="starting scale of head motion (0-3)")
    p.add_argument("--max-sessions", type=int, default=argparse.SUPPRESS,
                   help=f"{sessions_help} (default: measured at start, in CPU time so "
                   "other programs' load does not count: one session's frames (generator, renderer, VP8) are timed "
                   "and the cores this process may use take as many as fit at 25 fps, counting the measured work "
                   "as 40%% of a session's whole cost; the number is printed)")
    p.add_argument("--setup-timeout", type=float, default=15.0, metavar="S",
                   help="a visitor whose media connection is not up this long after the answer is disconnected")
    p.add_argument("--lobby-timeout", type=float, default=60.0, metavar="S",
                   help="a websocket without an offer that sends nothing this long is closed (the page "
                   "reconnects on Start); at most 16 such websockets are open at once")
    p.add_argument("--ice-server", action="append", default=[], metavar="URL",
                   help="STUN/TURN server for clients beyond the LAN, e.g. stun:stun.example.org:3478 "
                   "(repeatable; never needed on loopback or a LAN)")
    p.add_argument("--turn-secret-file", type=Path, metavar="FILE",
                   help="file holding the TURN server's shared secret (coturn: use-auth-secret, "
                   "static-auth-secret); each visitor gets credentials derived from it (TURN REST: "
                   "'<expiry>:<name>' and an HMAC-SHA1) that expire after --turn-ttl. Or set AVATAR_TURN_SECRET. "
                   "Never on the command line, where `ps` shows it")
    p.add_argument("--turn-ttl", type=int, default=3600, metavar="S", help="lifetime of those TURN credentials")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="another page origin allowed to open the websocket (e.g. https://avatar.example.org "
                   "behind a proxy); its host is then also accepted in the Host header. The server's own origin "
                   "(its bound address or localhost) is always allowed; other Host names are refused (DNS rebinding)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch and OpenCV threads per session worker (1 is steadiest)")
    p.add_argument("--batching", choices=("on", "off"), default="on",
                   help="sessions sharing each generator and renderer call (continuous batching): on a "
                   "CPU the server then renders in a worker process a core, and this 2-core machine held 6 "
                   "balanced sessions batched against 5 unbatched (README: Serving at scale)")
    _add_backend(p)


def _batching(args) -> bool:
    return args.batching == "on"


def _turn_secret(args) -> str | None:
    """The TURN shared secret from --turn-secret-file or AVATAR_TURN_SECRET (never argv: `ps` shows argv)."""
    import os

    from engine.errors import UserError

    if args.turn_secret_file is None:
        return os.environ.get("AVATAR_TURN_SECRET") or None
    try:
        secret = args.turn_secret_file.read_text().strip()
    except OSError as err:
        raise UserError(f"cannot read --turn-secret-file {args.turn_secret_file} ({err.strerror}); "
                        "pass a file holding the TURN server's static-auth-secret") from None
    if not secret:
        raise UserError(f"--turn-secret-file {args.turn_secret_file} is empty; put the TURN server's secret in it")
    return secret


def _server_config(args, **extra):
    from engine.server.app import ServerConfig
    from engine.stream import Controls

    return ServerConfig(
        host=args.host, port=args.port, portrait=args.portrait, size=args.size, preset=args.preset,
        driver=_driver(args), device=args.device,
        controls=Controls(args.emotion, args.expressiveness, args.head_motion),
        max_sessions=getattr(args, "max_sessions", None), ice_servers=tuple(args.ice_server),
        turn_secret=_turn_secret(args), turn_ttl_s=args.turn_ttl, allow_origins=tuple(args.allow_origin),
        setup_timeout_s=args.setup_timeout,
        lobby_timeout_s=args.lobby_timeout, **extra,
    )


def _add_serve(sub) -> None:
    p = sub.add_parser(
        "serve", help="serve the live avatar page: each visitor talks, their avatar answers in real time",
        description="Serve the page, the WebRTC signaling and /health on one port. Each visitor's microphone "
        "drives their own avatar session (video and their delayed voice come back); controls and live stats "
        "travel on a data channel. Visitors may upload their own portrait unless --no-uploads.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_server_options(p, "most concurrent visitors; more are told the server is full")
    p.add_argument("--idle-timeout", type=float, default=60.0, metavar="S",
                   help="idle policy: a visitor whose microphone sends nothing audible (no audio, or only silence "
                   "below -50 dBFS) this long is told so and disconnected, freeing their place")
    p.add_argument("--no-uploads", action="store_true", help="visitors may not bring their own portrait "
                   "(uploads: at most 8 MiB and 16 megapixels, 3 per connection then one every 20 s)")
    p.set_defaults(handler=_serve)


def _add_live(sub) -> None:
    p = sub.add_parser(
        "live", help="broadcast: this machine's microphone drives one avatar that any number of viewers watch",
        description="Capture a local microphone (PortAudio via sounddevice), animate one avatar from it and "
        "stream that one generation to every viewer of the page.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_server_options(p, "most concurrent viewers; more are told the stream is full")
    p.add_argument("--input-device", help="microphone: a PortAudio device index or part of its name "
                   "(default: the system's default input; see --list-devices)")
    p.add_argument("--list-devices", action="store_true", help="list the input devices and exit")
    p.add_argument("--viewer-controls", action="store_true",
                   help="let viewers change the emotion and sliders and interrupt (off: they only watch)")
    p.add_argument("--publish-whip", metavar="URL",
                   help="also publish the broadcast to a media server's WHIP endpoint (Janus via simple-whip-server, "
                   "MediaMTX, LiveKit ingress...), which serves any number of viewers; republished if it drops")
    p.add_argument("--whip-token", metavar="T", help="bearer token for --publish-whip, when the endpoint wants one")
    p.set_defaults(handler=_live)


def _serve(args) -> None:
    from engine.server.app import Converse
    from engine.server.run import serve

    mode = Converse(uploads=not args.no_uploads, idle_timeout_s=args.idle_timeout)
    serve(_server_config(args, mode=mode), threads=args.threads, prepare=_prepare(), batching=_batching(args))


def _live(args) -> None:
    if args.list_devices:
        from engine.audio.mic import format_devices, list_input_devices

        print(format_devices(list_input_devices()))
        return
    from engine.errors import UserError
    from engine.server.app import Broadcast
    from engine.server.run import live
    from engine.server.whip import WhipTarget

    if args.whip_token is not None and args.publish_whip is None:
        raise UserError("--whip-token is for --publish-whip; pass the WHIP endpoint's URL with it")
    whip = None if args.publish_whip is None else WhipTarget(args.publish_whip, args.whip_token)
    live(_server_config(args, mode=Broadcast(viewer_controls=args.viewer_controls)), args.input_device,
         threads=args.threads, prepare=_prepare(), publish=whip, batching=_batching(args))


def _add_export(sub) -> None:
    _add_group(sub, "export", "export optimized graphs (avatar export onnx --help)",
               "Export. `avatar export onnx --help`: the generator's and renderer's graphs to ONNX, validated "
               "against torch; `avatar export tensorrt --help`: TensorRT engines from those graphs.")


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
    _add_rl(sub)
    _add_serve(sub)
    _add_live(sub)
    _add_export(sub)
    sub.add_parser("client", help="connect to a server like the page does: stream a file or the mic, record the "
                   "reply (avatar client --help)", add_help=False)
    sub.add_parser("bench", help="frames/s, latency percentiles and per-stage cost for each backend and preset "
                   "(avatar bench --help)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    for n in (2, 1):
        if tuple(argv[:n]) in DELEGATED:
            import importlib

            return importlib.import_module(DELEGATED[tuple(argv[:n])]).main(argv[n:])
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
