"""MP4 files: H.264 video at FPS with AAC audio aligned to the sample, written and read with PyAV.

Alignment is by construction: video frame n has pts n in time base 1/FPS and covers audio samples
[n * SAMPLES_PER_FRAME, (n + 1) * SAMPLES_PER_FRAME); audio packets carry pts in samples. The AAC
encoder's priming delay is recorded by the MP4 muxer as an edit list, which decoders (browsers,
ffmpeg, `read_audio` below) apply, so decoded sample 0 plays with frame 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from engine.errors import UserError
from engine.timebase import AUDIO_TIME_BASE, FPS, SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_TIME_BASE

# Best first, with the options that make each fast at good quality. libx264 ships in the `av` wheel
# (veryfast/CRF 20: ~3 ms a 512x512 frame here, ~35 dB on a detailed photo); the others cover builds
# without it and only take a bit rate (mpeg4's default 200 kb/s would blur the face).
VIDEO_ENCODERS: tuple[tuple[str, dict[str, str]], ...] = (
    ("libx264", {"crf": "20", "preset": "veryfast"}),
    ("libopenh264", {"b": "3M"}),
    ("mpeg4", {"b": "3M"}),
)
AAC_FRAME = 1024  # samples per AAC-LC packet: the encoder takes audio in blocks of this size
AAC_BIT_RATE = 64_000  # transparent enough for 16 kHz mono speech


def pick_video_encoder() -> tuple[str, dict[str, str]]:
    """The best H.264 (else MPEG-4) encoder this `av` build has, with its options."""
    for name, options in VIDEO_ENCODERS:
        try:
            av.Codec(name, "w")
        except av.codec.codec.UnknownCodecError:
            continue
        return name, options
    raise RuntimeError(f"this PyAV build has none of the encoders {[n for n, _ in VIDEO_ENCODERS]}; "
                       "reinstall the `av` wheel from PyPI, which bundles libx264")


class Mp4Writer:
    """Writes RGB frames (and mono audio) to an MP4, frame n at n / FPS seconds.

    `audio` is the whole track or its beginning (mono float32 at SAMPLE_RATE); more can follow with
    `write_audio`. Pass an empty array to open an audio track that is fed only incrementally; with
    `audio=None` the file has no audio track. On close the audio is trimmed or padded with silence to
    end exactly with the last video frame. Odd sizes are padded by one edge row/column (yuv420p
    needs even sides); `size` is then the padded size.
    """

    def __init__(self, path: str | Path, size: tuple[int, int], audio: np.ndarray | None = None):
        self.path = Path(path)
        self.input_size = (int(size[0]), int(size[1]))  # (W, H) of the frames passed to write()
        width, height = self.input_size
        if width <= 0 or height <= 0:
            raise ValueError(f"Mp4Writer size {size} must be a positive (width, height)")
        self.size = (width + width % 2, height + height % 2)  # (W, H) as encoded
        if audio is not None:
            audio = self._check_audio(audio)
        self.codec, options = pick_video_encoder()
        self.frames = 0  # video frames written
        self._container = av.open(str(self.path), "w", format="mp4", options={"movflags": "+faststart"})
        self._video = self._container.add_stream(self.codec, rate=FPS, options=options)
        self._video.width, self._video.height = self.size
        self._video.pix_fmt = "yuv420p"
        self._video.codec_context.time_base = VIDEO_TIME_BASE
        self._audio = None
        self._pending = np.zeros(0, np.float32)  # audio received but not yet encoded
        self._audio_sent = 0  # samples handed to the AAC encoder
        if audio is not None:
            self._audio = self._container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
            self._audio.bit_rate = AAC_BIT_RATE
        try:  # opens the file now, so a bad path fails here rather than at the first frame
            self._container.start_encoding()
        except OSError as err:
            raise UserError(f"cannot write {self.path} ({err.strerror or err}); "
                            "pick an output path in an existing, writable folder") from err
        if audio is not None:
            self.write_audio(audio)

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write(self, frame: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame."""
        width, height = self.input_size
        if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"Mp4Writer({self.path.name}) wants ({height}, {width}, 3) uint8 RGB frames, "
                             f"got {frame.shape} {frame.dtype}")
        if self.size != self.input_size:
            frame = np.pad(frame, ((0, self.size[1] - height), (0, self.size[0] - width), (0, 0)), mode="edge")
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video_frame.pts = self.frames
        video_frame.time_base = VIDEO_TIME_BASE
        self._container.mux(self._video.encode(video_frame))
        self.frames += 1
        self._encode_audio(self.frames * SAMPLES_PER_FRAME)

    def write_audio(self, samples: np.ndarray) -> None:
        """Append mono float32 samples at SAMPLE_RATE; they are encoded as the video catches up with them."""
        if self._audio is None:
            raise ValueError(f"Mp4Writer({self.path.name}) was opened without audio; "
                             "pass audio=np.zeros(0, np.float32) to push audio incrementally")
        self._pending = np.concatenate([self._pending, self._check_audio(samples)])
        self._encode_audio(self.frames * SAMPLES_PER_FRAME)

    def _check_audio(self, samples: np.ndarray) -> np.ndarray:
        samples = np.asarray(samples)
        if samples.ndim != 1 or samples.dtype.kind != "f":
            raise ValueError(f"audio for {self.path.name} must be mono float samples at {SAMPLE_RATE} Hz, "
                             f"got shape {samples.shape} dtype {samples.dtype}; load it with engine.audio.io")
        return samples.astype(np.float32, copy=False)

    def _encode_audio(self, until: int, pad: bool = False) -> None:
        """Encode whole AAC blocks of pending audio up to sample `until` (padding with silence if `pad`).

        Audio never runs ahead of the video, so the tail can still be trimmed to the last frame at close.
        """
        if self._audio is None:
            return
        available = self._audio_sent + len(self._pending)
        if pad and available < until:
            self._pending = np.concatenate([self._pending, np.zeros(until - available, np.float32)])
        while True:
            size = min(AAC_FRAME, until - self._audio_sent, len(self._pending))
            if size <= 0 or (size < AAC_FRAME and not pad):
                return
            block, self._pending = self._pending[:size], self._pending[size:]
            audio_frame = av.AudioFrame.from_ndarray(block[None, :], format="fltp", layout="mono")
            audio_frame.sample_rate = SAMPLE_RATE
            audio_frame.pts = self._audio_sent
            audio_frame.time_base = AUDIO_TIME_BASE
            self._container.mux(self._audio.encode(audio_frame))
            self._audio_sent += size

    def close(self) -> None:
        """Flush the encoders and end the audio exactly with the last video frame."""
        if self._container is None:
            return
        self._container.mux(self._video.encode(None))
        if self._audio is not None:
            self._encode_audio(self.frames * SAMPLES_PER_FRAME, pad=True)
            self._container.mux(self._audio.encode(None))
        self._container.close()
        self._container = None


@dataclass(frozen=True)
class VideoInfo:
    """What an MP4 really holds, measured by decoding it."""

    frames: int  # decoded video frames
    fps: Fraction  # from the decoded frames' timestamps
    width: int
    height: int
    codec: str  # video codec, e.g. "h264"
    audio_duration: float  # seconds of decoded audio; 0.0 without an audio track
    audio_rate: int | None  # audio sample rate in Hz; None without an audio track

    @property
    def duration(self) -> float:
        """Seconds of video."""
        return self.frames / self.fps


def _open(path: str | Path) -> av.container.InputContainer:
    try:
        return av.open(str(path))
    except OSError as err:
        raise UserError(f"cannot read video {path} ({err.strerror or err}); pass an existing MP4 file") from err


def _video_stream(container: av.container.InputContainer, path: str | Path) -> av.VideoStream:
    if not container.streams.video:
        raise UserError(f"{path} has no video track; pass an MP4 with video")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def _decode_audio(container: av.container.InputContainer, rate: int | None) -> tuple[np.ndarray, int]:
    """(mono float32 samples, their rate) of the first audio track, resampled to `rate` (None: keep the file's).

    AAC decoders return whole 1024-sample packets; the track's own duration (the MP4 edit list) says
    where the audio really ends, so the padding in the last packet is cut off here, as players do.
    """
    stream = container.streams.audio[0]
    rate = rate or stream.codec_context.sample_rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    chunks = [out.to_ndarray().reshape(-1) for frame in container.decode(stream) for out in resampler.resample(frame)]
    chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if stream.duration is not None:
        samples = samples[: round(stream.duration * stream.time_base * rate)]
    return samples, rate


def probe(path: str | Path) -> VideoInfo:
    """Decode every frame and sample of `path` and report what is there."""
    with _open(path) as container:
        video = _video_stream(container, path)
        pts = [frame.pts for frame in container.decode(video)]
        context = video.codec_context
        if len(pts) > 1:  # measured spacing of the decoded frames, not the header's claim
            fps = (len(pts) - 1) / ((pts[-1] - pts[0]) * video.time_base)
        else:
            fps = Fraction(video.average_rate or FPS)
    audio_rate, audio_duration = None, 0.0
    with _open(path) as container:
        if container.streams.audio:
            samples, audio_rate = _decode_audio(container, None)
            audio_duration = len(samples) / audio_rate
    return VideoInfo(len(pts), fps, context.width, context.height, context.name, audio_duration, audio_rate)


def read_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Yield the video frames of `path` in display order as (H, W, 3) uint8 RGB."""
    with _open(path) as container:
        for frame in container.decode(_video_stream(container, path)):
            yield frame.to_ndarray(format="rgb24")


def read_audio(path: str | Path) -> np.ndarray:
    """The audio track of `path` as mono float32 at SAMPLE_RATE, starting with video frame 0 (priming removed)."""
    with _open(path) as container:
        if not container.streams.audio:
            raise UserError(f"{path} has no audio track; pass a file with audio")
        return _decode_audio(container, SAMPLE_RATE)[0]
