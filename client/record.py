"""Recording what the server sends back: H.264 + AAC in an MP4, each stream timed from its own pts;
the motion stream as JSON lines."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av

FPS = 25  # the server's frame rate


class Recorder:
    """Frames go in as they arrive (aiortc's decoded av frames); close() finishes the file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), "w")
        self._video = self._audio = None
        self._first: dict[str, int] = {}  # first pts per kind: both streams start at 0
        self._early: list[av.AudioFrame] = []
        self._resampler = av.AudioResampler(format="fltp", layout="mono", rate=48000)

    def add(self, frame) -> None:
        if isinstance(frame, av.VideoFrame):
            if self._video is None:  # both streams are made now: none can be added once muxing starts
                self._video = self._container.add_stream("libx264", rate=FPS)
                self._video.width, self._video.height, self._video.pix_fmt = frame.width, frame.height, "yuv420p"
                self._video.options = {"preset": "ultrafast"}
                self._audio = self._container.add_stream("aac", rate=48000, layout="mono")
            first = self._first.setdefault("video", frame.pts)
            frame.pts = round((frame.pts - first) * frame.time_base * FPS)
            frame.time_base = Fraction(1, FPS)
            self._mux(self._video.encode(frame.reformat(format="yuv420p")))
            for early in self._early:
                self._add_audio(early)
            self._early.clear()
        elif self._audio is None:
            self._early.append(frame)  # audio that came before the first video frame
        else:
            self._add_audio(frame)

    def _add_audio(self, frame) -> None:
        pts = frame.pts - self._first.setdefault("audio", frame.pts)
        for out in self._resampler.resample(frame):
            out.pts, out.time_base = pts, Fraction(1, 48000)
            pts += out.samples
            self._mux(self._audio.encode(out))

    def _mux(self, packets) -> None:
        for packet in packets:
            self._container.mux(packet)

    def close(self) -> str:
        for stream in (self._video, self._audio):
            if stream is not None:
                self._mux(stream.encode(None))
        self._container.close()
        return str(self.path)


class MotionRecorder:
    """The motion stream (engine.server.protocol, "motion") as JSON lines that engine.motion.spec.load
    reads: a header line (spec's, plus the stream's pts clock and `first_video_pts`), then one line per
    frame, {"pts": <the video frame's pts, 90 kHz>, "coeffs": [blendshapes..., head...]}."""

    def __init__(self, path: str | Path):
        from engine.motion import spec

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w")
        self._header = {"format": spec.FORMAT, "version": spec.VERSION}
        self.frames = 0

    def add(self, message: dict) -> None:
        """A "motion_names" or "motion" message from the server's data channel."""
        if message["type"] == "motion_names":
            names = message["blendshapes"] + message["head"]
            self._file.write(json.dumps({**self._header, "fps": message["fps"], "names": names,
                                         "clock": message["clock"], "first_video_pts": message["first_video_pts"]})
                             + "\n")
        else:
            self._file.write(json.dumps({"pts": message["pts"], "coeffs": message["blendshapes"] + message["head"]},
                                        separators=(",", ":")) + "\n")
            self.frames += 1

    def close(self) -> str:
        self._file.close()
        return str(self.path)
