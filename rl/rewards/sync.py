"""Lip-sync terms: the lip-sync expert's verdict, and the forced-aligned mouth opening where a transcript exists.

SyncTerm: train.sync_expert's `sync_offsets` on the motion and the audio features: confidence (max minus median of
the offset curve: ~0 for a mouth with no sync evidence) less `offset_penalty` per frame of |offset|. A clip with no
speech scores 0.

AlignmentTerm: the transcript is force-aligned by pocketsphinx (train.eval_lipsync.align, once per audio: cached
on the audio's hash) unless the sample brings its phones; the reference opening per phone is train.eval_video's
(on the acoustic boundaries); the value is Pearson r of the motion's mouth opening (jawOpen less mouthClose) with
it at lag 0. Samples without a transcript, and transcripts pocketsphinx cannot align, score 0 and are counted in
the `aligned` diagnostic (0 or 1): with G samples of one prompt they shift the whole group alike, so GRPO's
advantages are untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rl.rewards.base import Sample, TermResult, mouth_opening, stack

ALIGNMENT_CACHE = 1024  # prompts whose phones are kept


@dataclass(frozen=True)
class SyncOptions:
    expert: str = ""  # sync_expert.safetensors (`avatar train sync`); "" = the shipped one (engine/assets)
    offset_penalty: float = 0.05  # per frame of |offset|, in confidence units
    max_offset: int = 15  # frames searched either way


class SyncTerm:
    """confidence - offset_penalty * |offset_frames| from the lip-sync expert."""

    name = "sync"
    needs_frames = False

    def __init__(self, options: SyncOptions = SyncOptions()):
        from train.sync_expert import load_expert

        self.options = options
        from engine.assets import ASSETS_DIR

        self.expert = load_expert(Path(options.expert) if options.expert else ASSETS_DIR / "sync_expert.safetensors")

    def __call__(self, samples: Sequence[Sample]) -> TermResult:
        from train.sync_expert import sync_offsets

        rows = []
        for s in samples:
            result = sync_offsets(self.expert, s.features, s.motion, self.options.max_offset)
            rows.append({"confidence": result.confidence, "offset_frames": float(result.offset_frames),
                         "has_speech": float(result.has_speech)})
        values = np.array([r["confidence"] - self.options.offset_penalty * abs(r["offset_frames"]) for r in rows])
        return TermResult(values, stack(rows))


class AlignmentTerm:
    """Pearson r (lag 0) of the mouth opening with the transcript's forced-aligned reference opening."""

    name = "alignment"
    needs_frames = False

    def __init__(self):
        self._phones: dict[str, tuple | None] = {}  # audio_key -> phones (None: could not align)

    def phones(self, sample: Sample) -> tuple | None:
        """The sample's phones: its own, or its transcript aligned to its audio (cached); None if neither."""
        if sample.phones:
            return sample.phones
        if not sample.transcript:
            return None
        key = sample.audio_key
        if key not in self._phones:
            from train.eval_lipsync import AlignmentError, align

            try:
                self._phones[key] = align(sample.audio, sample.transcript)
            except AlignmentError:
                self._phones[key] = None
            if len(self._phones) > ALIGNMENT_CACHE:
                self._phones.pop(next(iter(self._phones)))
        return self._phones[key]

    def __call__(self, samples: Sequence[Sample]) -> TermResult:
        from train.eval_lipsync import lagged_r
        from train.eval_video import reference_opening

        rows = []
        for s in samples:
            phones = self.phones(s)
            if phones is None:
                rows.append({"r": 0.0, "best_lag": 0.0, "aligned": 0.0})
                continue
            opening = mouth_opening(s.motion)
            if opening.std() < 1e-6:  # a still mouth follows nothing (and Pearson r is undefined)
                rows.append({"r": 0.0, "best_lag": 0.0, "aligned": 1.0})
                continue
            r0, lag, _ = lagged_r(opening, reference_opening(phones, len(s)))
            rows.append({"r": r0 if np.isfinite(r0) else 0.0, "best_lag": float(lag), "aligned": 1.0})
        return TermResult(np.array([r["r"] for r in rows]), stack(rows))
