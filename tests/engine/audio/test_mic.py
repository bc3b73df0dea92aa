"""Microphone capture: device choice on a made-up device list (no PortAudio needed), then real capture from
a virtual PulseAudio microphone (the pulse_source fixture) through PortAudio's ALSA `default` device."""

import importlib.abc
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.signal import correlate

from engine.assets import SAMPLE_SPEECH
from engine.audio import mic
from engine.audio.io import load_audio, to_mono_16k
from engine.audio.mic import InputDevice, Microphone, format_devices, list_input_devices, resolve_device
from engine.errors import UserError
from engine.timebase import SAMPLE_RATE

DEVICES = [
    InputDevice(0, "HDA Intel PCH: ALC3246 Analog (hw:0,0)", "ALSA", 2, 44100, False),
    InputDevice(1, "HDMI 0", "ALSA", 0, 48000, False),
    InputDevice(2, "USB Audio Mic", "ALSA", 1, 48000, False),
    InputDevice(3, "default", "ALSA", 32, 44100, True),
]


@pytest.fixture
def devices(monkeypatch):
    monkeypatch.setattr(mic, "_query", lambda: DEVICES)
    return DEVICES


@pytest.mark.parametrize("spec, index", [(None, 3), (2, 2), (" 2 ", 2), ("usb", 2), ("DEFAULT", 3), ("alc3246", 0)])
def test_resolve_device(devices, spec, index):
    assert resolve_device(spec).index == index


@pytest.mark.parametrize("spec, problem", [
    ("no-such-mic", "no audio device name contains 'no-such-mic'"),
    ("9", "no audio device with index 9"),
    ("hdmi", "'hdmi' matches only output devices (1 (HDMI 0, ALSA))"),
    (1, "matches only output devices"),
    ("a", "'a' is ambiguous: it matches 0 (HDA Intel"),
])
def test_resolve_device_errors_name_the_input_and_list_the_inputs(devices, spec, problem):
    with pytest.raises(UserError, match="--input-device") as e:
        resolve_device(spec)
    message = str(e.value)
    assert problem in message
    for name in ("HDA Intel PCH", "USB Audio Mic", "default"):
        assert name in message
    assert "HDMI 0  " not in message  # output-only devices are not offered


def test_no_default_input_is_a_user_error(monkeypatch):
    monkeypatch.setattr(mic, "_query", lambda: [d for d in DEVICES if not d.is_default])
    with pytest.raises(UserError, match=r"no default audio input device(.|\n)*USB Audio Mic"):
        resolve_device(None)


def test_format_devices_marks_the_default(devices):
    lines = format_devices(list_input_devices()).splitlines()
    assert len(lines) == 5  # header, three inputs, legend
    assert lines[-2].startswith("*") and "default" in lines[-2] and "44100" in lines[-2]
    assert not any("HDMI" in line for line in lines)
    assert "no audio input devices" in format_devices([])


def test_missing_portaudio_says_what_to_install(monkeypatch):
    class NoPortAudio(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "sounddevice":  # what sounddevice's import does when libportaudio2 is absent
                raise OSError("PortAudio library not found")

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [NoPortAudio(), *sys.meta_path])
    with pytest.raises(UserError, match="apt-get install libportaudio2"):
        list_input_devices()


def test_callback_downmixes_copies_and_counts_overflows(devices):
    got = []
    microphone = Microphone(lambda samples, rate: got.append((samples, rate)), device="hda", sample_rate=48000)
    block = np.array([[0.5, -0.5], [0.25, 0.75]], np.float32)  # (frames, channels)
    microphone._callback(block, 2, None, SimpleNamespace(input_overflow=False))
    microphone._callback(block, 2, None, SimpleNamespace(input_overflow=True))
    block[:] = 0  # PortAudio reuses its buffer
    assert microphone.overflows == 1
    (samples, rate), _ = got
    assert rate == 48000 and samples.dtype == np.float32
    np.testing.assert_allclose(samples, [0.0, 0.5])


# --- against a real sound server -------------------------------------------------------------------------


class Recorder:
    """on_audio that keeps every block."""

    def __init__(self):
        self.blocks: list[np.ndarray] = []
        self.rate = 0

    def __call__(self, samples, rate):
        self.blocks.append(samples)
        self.rate = rate

    def seconds(self) -> float:
        return sum(map(len, self.blocks)) / self.rate if self.blocks else 0.0

    def audio(self) -> np.ndarray:
        return to_mono_16k(np.concatenate(self.blocks), self.rate)


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for captured audio"
        time.sleep(0.01)


def record(feeder, samples, **mic_options) -> tuple[Recorder, Microphone]:
    """Feed `samples` (16 kHz) once the microphone runs; return once the capture covers them plus 0.5 s."""
    recorder = Recorder()
    with Microphone(recorder, **mic_options) as microphone:
        wait_until(lambda: recorder.blocks)
        before = recorder.seconds()
        seconds = feeder.feed(samples)
        assert feeder.wait(timeout=seconds + 10)
        wait_until(lambda: recorder.seconds() >= before + seconds + 0.5)
    return recorder, microphone


def test_lists_and_resolves_the_pulse_devices(pulse_source):
    devices = {d.name: d for d in list_input_devices()}
    assert {"pulse", "default"} <= devices.keys()
    assert devices["default"].is_default and devices["default"].host_api == "ALSA"
    assert resolve_device(None) == devices["default"]
    assert resolve_device("PULSE") == resolve_device(devices["pulse"].index) == devices["pulse"]
    with pytest.raises(UserError, match=r"'no-such-mic'(.|\n)*pulse") as e:
        resolve_device("no-such-mic")
    assert "default" in str(e.value)


@pytest.mark.parametrize("rate", [None, 48000], ids=["device-rate", "48k"])
def test_captures_what_the_source_hears(pulse_source, rate):
    speech = load_audio(SAMPLE_SPEECH)[: 2 * SAMPLE_RATE]
    recorder, microphone = record(pulse_source, speech, sample_rate=rate)
    assert recorder.rate == microphone.sample_rate == (rate or resolve_device(None).default_rate)
    assert microphone.error is None and microphone.overflows == 0 and pulse_source.dropped == 0

    captured = recorder.audio()
    lag = int(np.argmax(correlate(captured, speech, mode="valid")))
    heard = captured[lag: lag + len(speech)]
    similarity = np.dot(heard, speech) / (np.linalg.norm(heard) * np.linalg.norm(speech))
    assert similarity > 0.9, f"captured audio does not match what was fed (normalized correlation {similarity:.3f})"
    level_db = 20 * np.log10(np.linalg.norm(heard) / np.linalg.norm(speech))
    assert abs(level_db) < 1.0, f"captured level is {level_db:+.1f} dB off"
    assert lag / SAMPLE_RATE < 0.5  # the capture is live, not buffered seconds behind


def test_silence_is_silent(pulse_source):
    recorder, _ = record(pulse_source, np.zeros(SAMPLE_RATE, np.float32))
    captured = recorder.audio()
    assert len(captured) > SAMPLE_RATE  # blocks kept coming: the idle source did not stall
    assert np.sqrt(np.mean(captured**2)) < 1e-4


def test_a_failing_callback_stops_the_stream(pulse_source):
    def on_audio(samples, rate):
        raise RuntimeError("consumer closed")

    with Microphone(on_audio) as microphone:
        wait_until(lambda: not microphone.active)
    assert isinstance(microphone.error, RuntimeError)


def test_an_unusable_rate_is_a_user_error(pulse_source):
    with pytest.raises(UserError, match=r"cannot open input device \d+ \(default, ALSA\) at 1000000 Hz"):
        Microphone(lambda samples, rate: None, sample_rate=1_000_000).start()
