"""`avatar client`: connect to a running server like the page does (see client/peer.py)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from client.peer import ClientError, ClientOptions, run_client


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="avatar client",
        description="Connect to `avatar serve` or `avatar live` over WebRTC like the browser page: send a speech "
        "file in real time (or your microphone), record the avatar that comes back and print what a viewer "
        "gets: time to first frame, fps, A/V offset of the returned stream, a latency estimate and the "
        "server's engine latency.",
        epilog="Examples: avatar client ws://127.0.0.1:8080/ws --audio speech.wav --record out/reply.mp4; "
        "avatar client ws://127.0.0.1:8080/ws --mic --seconds 30; "
        "avatar client ws://host:8080/ws --seconds 60   (a viewer of `avatar live`)",
    )
    parser.add_argument("url", help="the server's websocket, ws://HOST:PORT/ws (what `avatar serve` prints, with ws)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--audio", type=Path, help="speech file to send in real time (wav, flac, mp3, ogg)")
    source.add_argument("--mic", action="store_true", help="send this machine's microphone")
    parser.add_argument("--input-device", help="with --mic: device index or part of its name")
    parser.add_argument("--seconds", type=float, help="stop after this long (default: the file, then --tail)")
    parser.add_argument("--tail", type=float, default=2.0, help="seconds of silence sent after the file")
    parser.add_argument("--record", type=Path, help="write what comes back (video + audio) to this MP4")
    parser.add_argument("--record-motion", type=Path, help="ask for the motion stream (ARKit blendshapes and head "
                        "pose of every frame shown) and write it here as JSON lines")
    parser.add_argument("--portrait", type=Path, help="upload this photo as the avatar first")
    parser.add_argument("--preset", help="latency preset to ask for (low-latency, balanced, quality)")
    parser.add_argument("--emotion", help="set this emotion once connected")
    parser.add_argument("--stats-out", type=Path, help="also write the measurements as JSON")
    args = parser.parse_args(argv)
    url = args.url if args.url.startswith(("ws://", "wss://")) else \
        "ws://" + args.url.removeprefix("http://").rstrip("/") + "/ws"
    options = ClientOptions(
        audio=args.audio, seconds=args.seconds, tail_s=args.tail, mic=args.mic, input_device=args.input_device,
        record=args.record, record_motion=args.record_motion, portrait=args.portrait, preset=args.preset,
        controls={"emotion": args.emotion} if args.emotion else {},
    )
    from engine.errors import UserError

    try:
        report = asyncio.run(run_client(url, options))
    except (ClientError, UserError, OSError) as err:
        print(f"avatar client: error: {err}", file=sys.stderr)
        return 1
    print(report.summary())
    if args.stats_out:
        args.stats_out.parent.mkdir(parents=True, exist_ok=True)
        args.stats_out.write_text(report.to_json())
    return 0 if report.frames else 1


if __name__ == "__main__":
    sys.exit(main())
