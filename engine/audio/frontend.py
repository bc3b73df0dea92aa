"""The audio frontend: a 16 kHz sample stream in, per-video-frame features out.

Per video frame n (samples [n * SAMPLES_PER_FRAME, (n + 1) * SAMPLES_PER_FRAME)): 4 log-mel
frames (engine.audio.mel), energy/F0/voicing (engine.audio.prosody) and speech probability
(engine.audio.vad). Frame n is handed out once every extractor has it, i.e. once
`LOOKAHEAD_SAMPLES` samples after its end have arrived; flush() zero-pads the end of a stream.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from engine.audio.mel import MEL_LOOKAHEAD, StreamingLogMel
from engine.audio.prosody import PROSODY_LOOKAHEAD, StreamingProsody
from engine.audio.vad import VAD_LOOKAHEAD, StreamingVAD
from engine.timebase import MEL_HOP, MELS_PER_FRAME, N_MELS, SAMPLE_RATE, SAMPLES_PER_FRAME, frames_for_samples

# The last mel frame of video frame n is centred (MELS_PER_FRAME - 1) * MEL_HOP after the frame's start.
_MEL_LOOKAHEAD_AFTER_FRAME = (MELS_PER_FRAME - 1) * MEL_HOP + MEL_LOOKAHEAD + 1 - SAMPLES_PER_FRAME
LOOKAHEAD_SAMPLES = max(_MEL_LOOKAHEAD_AFTER_FRAME, PROSODY_LOOKAHEAD, VAD_LOOKAHEAD)  # after a frame's end


@dataclass(frozen=True)
class AudioFeatures:
    """Per-video-frame audio features for T consecutive frames."""

    mel: np.ndarray  # (T, MELS_PER_FRAME, N_MELS) float32 normalized log-mel (engine.audio.mel)
    energy: np.ndarray  # (T,) float32 frame RMS in dBFS, floored at -100
    f0: np.ndarray  # (T,) float32 Hz, 0 where unvoiced
    voicing: np.ndarray  # (T,) float32 periodicity in [0, 1]
    vad: np.ndarray  # (T,) float32 speech probability in [0, 1] (1 everywhere when VAD is off)

    def __post_init__(self):
        t = len(self.mel)
        if self.mel.shape[1:] != (MELS_PER_FRAME, N_MELS):
            raise ValueError(f"mel must be (T, {MELS_PER_FRAME}, {N_MELS}), got {self.mel.shape}")
        for f in fields(self)[1:]:
            if getattr(self, f.name).shape != (t,):
                raise ValueError(f"{f.name} must be ({t},) like mel's frames, got {getattr(self, f.name).shape}")

    def __len__(self) -> int:
        return len(self.mel)

    def __getitem__(self, index: slice) -> AudioFeatures:
        if not isinstance(index, slice):
            raise TypeError(f"AudioFeatures are sliced by frame range (features[a:b]), got {type(index).__name__}")
        return AudioFeatures(*(getattr(self, f.name)[index] for f in fields(self)))

    @staticmethod
    def empty() -> AudioFeatures:
        zero = np.zeros(0, np.float32)
        return AudioFeatures(np.zeros((0, MELS_PER_FRAME, N_MELS), np.float32), zero, zero, zero, zero)

    @staticmethod
    def concat(parts: list[AudioFeatures]) -> AudioFeatures:
        if not parts:
            return AudioFeatures.empty()
        return AudioFeatures(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(AudioFeatures)))


class AudioFrontend:
    """Streaming feature extraction for one audio stream (one per session; cheap to make)."""

    def __init__(self, with_vad: bool = True):
        self.with_vad = with_vad
        self._mel = StreamingLogMel()
        self._prosody = StreamingProsody()
        self._vad = StreamingVAD() if with_vad else None
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next push starts a new one at sample 0."""
        self._mel.reset()
        self._prosody.reset()
        if self._vad is not None:
            self._vad.reset()
        self._pushed = 0
        self.frames_emitted = 0  # video frames handed out since the stream began
        # Features computed but waiting for the slowest extractor.
        self._mel_out = np.zeros((0, N_MELS), np.float32)
        self._prosody_out = [np.zeros(0, np.float32)] * 3
        self._vad_out = np.zeros(0, np.float32)

    def _collect(self, mel, prosody, vad) -> AudioFeatures:
        self._mel_out = np.concatenate([self._mel_out, mel])
        self._prosody_out = [np.concatenate(pair) for pair in zip(self._prosody_out, prosody)]
        self._vad_out = np.concatenate([self._vad_out, vad])
        ready = min(len(self._mel_out) // MELS_PER_FRAME, len(self._prosody_out[0]))
        if self._vad is not None:
            ready = min(ready, len(self._vad_out))
            vad_ready, self._vad_out = self._vad_out[:ready], self._vad_out[ready:]
        else:
            vad_ready = np.ones(ready, np.float32)
        n_mel = ready * MELS_PER_FRAME
        mel_ready, self._mel_out = self._mel_out[:n_mel], self._mel_out[n_mel:]
        energy, f0, voicing = (p[:ready] for p in self._prosody_out)
        self._prosody_out = [p[ready:] for p in self._prosody_out]
        self.frames_emitted += ready
        return AudioFeatures(mel_ready.reshape(ready, MELS_PER_FRAME, N_MELS), energy, f0, voicing, vad_ready)

    def push(self, samples: np.ndarray) -> AudioFeatures:
        """(n,) float32 mono samples at SAMPLE_RATE -> features of every video frame newly completed."""
        samples = np.asarray(samples, np.float32).reshape(-1)
        self._pushed += len(samples)
        vad = self._vad.push(samples) if self._vad is not None else np.zeros(0, np.float32)
        return self._collect(self._mel.push(samples), self._prosody.push(samples), vad)

    def flush(self) -> AudioFeatures:
        """End of stream: features for the remaining frames (the last partial one zero-padded); then reset."""
        # Pad to whole video frames so the mel extractor completes all MELS_PER_FRAME frames of the last one.
        pad = np.zeros(frames_for_samples(self._pushed) * SAMPLES_PER_FRAME - self._pushed, np.float32)
        vad = self._vad.push(pad) if self._vad is not None else np.zeros(0, np.float32)
        mel, prosody = self._mel.push(pad), self._prosody.push(pad)
        vad = np.concatenate([vad, self._vad.flush()]) if self._vad is not None else vad
        out = self._collect(
            np.concatenate([mel, self._mel.flush()]),
            [np.concatenate(pair) for pair in zip(prosody, self._prosody.flush())],
            vad,
        )
        self.reset()
        return out


OFFLINE_WINDOW = 10 * SAMPLE_RATE  # samples pushed at a time: the extractors' scratch memory is per push


def extract_features(samples: np.ndarray, with_vad: bool = True) -> AudioFeatures:
    """Offline: features for frames_for_samples(len(samples)) video frames. The clip goes through the streaming
    frontend a window at a time (the same features as one push): pushed whole, its scratch memory grew
    ~2.8 MB per second of audio (2.2 GB for 10 minutes); now only the features themselves (~32 KB/s) grow."""
    frontend = AudioFrontend(with_vad=with_vad)
    parts = [frontend.push(samples[start : start + OFFLINE_WINDOW]) for start in range(0, len(samples), OFFLINE_WINDOW)]
    return AudioFeatures.concat([*parts, frontend.flush()])
