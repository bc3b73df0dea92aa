"""Microphone capture through sounddevice (PortAudio): pick an input device, then hand every ~20 ms block
to a callback as (n,) float32 mono at the device's rate. The consumer resamples (Session.push_audio does).

sounddevice is imported on first use, so this module loads without PortAudio and the user gets a
UserError that says how to install it instead of an OSError at import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from engine.errors import UserError
from engine.timebase import FPS

BLOCK_SECONDS = Fraction(1, 2 * FPS)  # half a video frame (20 ms) per callback: low latency, few wake-ups

AudioCallback = Callable[[np.ndarray, int], None]  # on_audio(samples (n,) float32 mono, sample_rate)


@dataclass(frozen=True)
class InputDevice:
    index: int  # PortAudio device index (what --input-device takes as a number)
    name: str
    host_api: str  # e.g. ALSA, JACK, Core Audio, WASAPI
    input_channels: int  # the most input channels it offers (0 for output-only devices, never listed)
    default_rate: int  # Hz
    is_default: bool  # PortAudio's default input


def _sounddevice():
    """The sounddevice module, or a UserError that says what to install."""
    try:
        import sounddevice
    except OSError as e:  # sounddevice loads libportaudio when imported
        raise UserError(f"cannot use the microphone: the PortAudio library is missing ({e}); install it "
                        "(Debian/Ubuntu: apt-get install libportaudio2, macOS: brew install portaudio)") from None
    except ImportError:
        raise UserError("cannot use the microphone: the sounddevice package is missing; "
                        "install it with `pip install sounddevice`") from None
    return sounddevice


def _query() -> list[InputDevice]:
    """Every device PortAudio sees, output-only ones included (input_channels 0)."""
    sd = _sounddevice()
    host_apis = sd.query_hostapis()
    default_input = sd.default.device[0]  # -1 when there is none
    return [
        InputDevice(i, d["name"], host_apis[d["hostapi"]]["name"], d["max_input_channels"],
                    round(d["default_samplerate"]), i == default_input)
        for i, d in enumerate(sd.query_devices())
    ]


def list_input_devices() -> list[InputDevice]:
    """The devices that can record, in PortAudio's order."""
    return [d for d in _query() if d.input_channels > 0]


def format_devices(devices: list[InputDevice]) -> str:
    """A table of input devices for `avatar live --list-devices`; '*' marks the default input."""
    if not devices:
        return "no audio input devices found (PortAudio sees none); plug in a microphone or start the sound server"
    width = max(len(d.name) for d in devices)
    lines = [f"  {'index':>5}  {'name':<{width}}  {'host API':<10}  {'channels':>8}  {'rate':>6}"]
    for d in devices:
        lines.append(f"{'*' if d.is_default else ' '} {d.index:>5}  {d.name:<{width}}  {d.host_api:<10}  "
                     f"{d.input_channels:>8}  {d.default_rate:>6}")
    return "\n".join(lines + ["(* = default input)"])


def resolve_device(spec: str | int | None) -> InputDevice:
    """The input device meant by --input-device: None = the default input, a number = a PortAudio index,
    anything else = a case-insensitive part of the name (an exact name wins over partial matches)."""
    devices = _query()
    inputs = [d for d in devices if d.input_channels > 0]

    def fail(problem: str) -> UserError:
        return UserError(f"{problem}; pass --input-device with an index or part of a name from:\n"
                         f"{format_devices(inputs)}")

    if spec is None:
        default = [d for d in inputs if d.is_default]
        if not default:
            raise fail("there is no default audio input device")
        return default[0]
    if isinstance(spec, int) or spec.strip().isdigit():
        found = [d for d in devices if d.index == int(spec)]
        if not found:
            raise fail(f"there is no audio device with index {spec}")
    else:
        key = spec.strip().lower()
        found = [d for d in devices if d.name.lower() == key] or [d for d in devices if key in d.name.lower()]
        if not found:
            raise fail(f"no audio device name contains {spec!r}")
    candidates = [d for d in found if d.input_channels > 0]
    if not candidates:
        raise fail(f"input device {spec!r} matches only output devices ({_names(found)}): they cannot record")
    if len(candidates) > 1:
        raise fail(f"input device {spec!r} is ambiguous: it matches {_names(candidates)}; "
                   "give the index or more of the name")
    return candidates[0]


def _names(devices: list[InputDevice]) -> str:
    return ", ".join(f"{d.index} ({d.name}, {d.host_api})" for d in devices)


class Microphone:
    """Records one input device and calls on_audio(samples, sample_rate) on PortAudio's thread for every
    ~20 ms block: (n,) float32 mono (channels averaged) at the rate the stream runs at.

    on_audio must return quickly (hand the block over, e.g. Session.push_audio). If it raises, the
    exception is kept in `error` and the stream stops; nothing propagates into PortAudio.

        with Microphone(session.push_audio, device="usb") as mic:
            ...
    """

    def __init__(self, on_audio: AudioCallback, device: str | int | None = None, sample_rate: int | None = None):
        self.device = resolve_device(device)
        self.sample_rate = sample_rate or self.device.default_rate  # Hz of the blocks handed to on_audio
        self.overflows = 0  # blocks PortAudio flagged as input overflow (samples were lost before them)
        self.error: Exception | None = None  # what on_audio raised, if it did (the stream then stopped)
        self._on_audio = on_audio
        self._stream = None

    def start(self) -> Microphone:
        sd = _sounddevice()
        if self._stream is not None:
            raise RuntimeError("Microphone.start() called twice; make a new Microphone")
        d = self.device
        try:
            # Mono where the device converts for us; otherwise all its channels, averaged in the callback.
            channels = 1 if self._accepts_mono(sd) else d.input_channels
            self._stream = sd.InputStream(device=d.index, samplerate=self.sample_rate, channels=channels,
                                          dtype="float32", blocksize=round(self.sample_rate * BLOCK_SECONDS),
                                          callback=self._callback)
            self._stream.start()
        except sd.PortAudioError as e:
            self.close()
            raise UserError(f"cannot open input device {d.index} ({d.name}, {d.host_api}) at {self.sample_rate} Hz "
                            f"({e}); try its default rate ({d.default_rate} Hz) or another --input-device "
                            "(see `avatar live --list-devices`)") from None
        return self

    def close(self) -> None:
        """Stop recording and release the device; safe to call more than once."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close(ignore_errors=True)

    @property
    def active(self) -> bool:
        """True while blocks are being delivered (False after close() or after on_audio raised)."""
        return self._stream is not None and self._stream.active

    def __enter__(self) -> Microphone:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _accepts_mono(self, sd) -> bool:
        try:
            sd.check_input_settings(self.device.index, channels=1, dtype="float32", samplerate=self.sample_rate)
        except sd.PortAudioError:
            return False
        return True

    def _callback(self, indata: np.ndarray, frames: int, time_info, status) -> None:
        # indata (frames, channels) is PortAudio's buffer, reused after we return: hand over a copy.
        if status.input_overflow:
            self.overflows += 1
        samples = indata[:, 0].copy() if indata.shape[1] == 1 else indata.mean(axis=1, dtype=np.float32)
        try:
            self._on_audio(samples, self.sample_rate)
        except Exception as e:  # PortAudio's thread cannot handle it: keep it for the owner, stop the stream
            self.error = e
            raise _sounddevice().CallbackAbort from None
