"""Phones -> visemes -> per-frame ARKit mouth targets, with coarticulation.

ARPAbet phones map to the 15 Oculus visemes; each viseme is a mouth shape (a few ARKit
coefficients). The shapes become a piecewise-constant track that is then coarticulated:
- diphthongs split into their two vowel shapes (55% / 45% of the phone), HH takes the shape of
  the phone after it (the mouth is already set for the vowel while the breath is heard);
- consonants made behind the lips (t, k, n, s, th) borrow half the lip rounding or spreading of
  the next vowel ("s" in "soon" is rounded, in "seen" spread);
- every shape but silence may start ANTICIPATION_S before its acoustic onset (capped at half the
  previous phone so no shape vanishes); the track is then smoothed with a Gaussian, so short vowels
  undershoot as in fast speech;
- bilabials (p, b, m) close the lips at their acoustic centre regardless (no anticipation: the
  lips open at the burst), since a missed closure is the most visible lip-sync error.
Frames are sampled at their centres on the engine's 25 fps grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.ndimage import gaussian_filter1d

from engine.motion import spec
from engine.timebase import FPS
from train.synth.phones import ARPABET, SIL, VOWELS, Phone

VISEMES = ("sil", "PP", "FF", "TH", "DD", "kk", "CH", "SS", "nn", "RR", "aa", "E", "ih", "oh", "ou")

PHONE_VISEMES: dict[str, tuple[str, ...]] = {
    "AA": ("aa",), "AE": ("aa",), "AH": ("aa",), "AO": ("oh",), "AW": ("aa", "ou"), "AY": ("aa", "ih"),
    "EH": ("E",), "ER": ("RR",), "EY": ("E", "ih"), "IH": ("ih",), "IY": ("ih",), "OW": ("oh", "ou"),
    "OY": ("oh", "ih"), "UH": ("ou",), "UW": ("ou",),
    "B": ("PP",), "M": ("PP",), "P": ("PP",), "F": ("FF",), "V": ("FF",), "DH": ("TH",), "TH": ("TH",),
    "D": ("DD",), "T": ("DD",), "G": ("kk",), "K": ("kk",), "NG": ("kk",), "CH": ("CH",), "JH": ("CH",),
    "SH": ("CH",), "ZH": ("CH",), "S": ("SS",), "Z": ("SS",), "L": ("nn",), "N": ("nn",), "R": ("RR",),
    "W": ("ou",), "Y": ("ih",), SIL: ("sil",),
}  # HH has none of its own: it takes the next phone's (_segments)
DIPHTHONG_SPLIT = 0.55  # share of a diphthong's duration taken by its first vowel
REDUCED = {"AH": 0.7, "IH": 0.85, "UH": 0.8, "AE": 0.9}  # lax vowels open less than their viseme's full shape


def _shape(**values: float) -> np.ndarray:
    """A (D,) offset from neutral; a name ending in _ sets both its _L and _R coefficients."""
    named = {}
    for name, v in values.items():
        named.update({f"{name}L": v, f"{name}R": v} if name.endswith("_") else {name: v})
    return spec.from_dict(named, base=np.zeros(spec.D, np.float32))


# Mouth shapes (raw coefficient offsets). Open vowels reach the baseline driver's jaw peak (~0.6).
SHAPES: dict[str, np.ndarray] = {
    "sil": _shape(),
    "PP": _shape(mouthClose=0.1, mouthPress_=0.5, mouthRollLower=0.15, mouthRollUpper=0.1),
    "FF": _shape(jawOpen=0.06, mouthRollLower=0.5, mouthUpperUp_=0.2, mouthClose=0.05),
    "TH": _shape(jawOpen=0.12, mouthLowerDown_=0.1, mouthStretch_=0.1),
    "DD": _shape(jawOpen=0.15, mouthLowerDown_=0.1, mouthStretch_=0.15),
    "kk": _shape(jawOpen=0.2, mouthLowerDown_=0.05, mouthStretch_=0.1),
    "CH": _shape(jawOpen=0.1, mouthFunnel=0.45, mouthPucker=0.2, mouthUpperUp_=0.15, mouthLowerDown_=0.1),
    "SS": _shape(jawOpen=0.05, mouthStretch_=0.35, mouthSmile_=0.1, mouthUpperUp_=0.1, mouthLowerDown_=0.1),
    "nn": _shape(jawOpen=0.12, mouthStretch_=0.1, mouthLowerDown_=0.05),
    "RR": _shape(jawOpen=0.15, mouthFunnel=0.3, mouthPucker=0.25),
    "aa": _shape(jawOpen=0.6, mouthLowerDown_=0.25, mouthUpperUp_=0.1),
    "E": _shape(jawOpen=0.35, mouthStretch_=0.3, mouthSmile_=0.1, mouthLowerDown_=0.2, mouthUpperUp_=0.1),
    "ih": _shape(jawOpen=0.2, mouthStretch_=0.4, mouthSmile_=0.15, mouthLowerDown_=0.1),
    "oh": _shape(jawOpen=0.4, mouthFunnel=0.5, mouthPucker=0.3, mouthLowerDown_=0.1),
    "ou": _shape(jawOpen=0.15, mouthFunnel=0.35, mouthPucker=0.7),
}
LIP_NEUTRAL = frozenset({"TH", "DD", "kk", "nn", "SS"})  # tongue consonants: the lips are free to coarticulate
LIP_BORROW = 0.5  # share of the next vowel's lip shape they take
_LIPS = [spec.index(n) for n in ("mouthFunnel", "mouthPucker", "mouthStretch_L", "mouthStretch_R",
                                 "mouthSmile_L", "mouthSmile_R")]

# How far shapes lead their sound. 0: a generator trained on 40 ms was measured on real voices, in the rendered
# video, with its mouth 40 ms early against acoustic phone boundaries (issue 12); viewers judge sync on those.
ANTICIPATION_S = 0.0
SMOOTHING_S = 0.03  # std of the Gaussian that blends neighbouring shapes (a vowel is held, not popped)
GRID_HZ = 200  # the shape track's resolution before sampling frames
# A bilabial is fully closed over the middle half of its span (its tail is the burst and aspiration of
# p/b, labelled as the stop), at least the frame that contains its centre, easing out over half a frame.
CLOSURE_SHARE = 0.5
CLOSURE_MIN_HALF_S = 0.5 / FPS
CLOSURE_FADE_S = 0.5 / FPS
_OPENING = [spec.index(n) for n in ("jawOpen", "mouthLowerDown_L", "mouthLowerDown_R", "mouthUpperUp_L",
                                    "mouthUpperUp_R")]
_CLOSING = [spec.index(n) for n in ("mouthClose", "mouthPress_L", "mouthPress_R", "mouthRollLower",
                                    "mouthRollUpper")]


@dataclass(frozen=True)
class _Segment:
    start_s: float
    end_s: float
    viseme: str
    shape: np.ndarray  # (D,) offset from neutral


def _segments(phones: Sequence[Phone]) -> list[_Segment]:
    """Phones -> viseme segments with diphthongs split, HH resolved and lip shapes borrowed."""
    for p in phones:
        if p.arpabet not in ARPABET:
            raise ValueError(f"phone {p.arpabet!r} at {p.start_s:.3f} s is not ARPAbet; map it with train.synth.phones")
    out = []
    for i, p in enumerate(phones):
        following = [q.arpabet for q in phones[i + 1 :]]
        source = p.arpabet
        if source == "HH":  # the shape of the phone after it, or rest before a pause
            source = following[0] if following and following[0] != "HH" else SIL
        visemes, weight = PHONE_VISEMES[source], REDUCED.get(source, 1.0)
        bounds = [p.start_s, p.end_s] if len(visemes) == 1 else [
            p.start_s, p.start_s + DIPHTHONG_SPLIT * p.duration_s, p.end_s]
        vowel = next((q for q in following if q in VOWELS or q == SIL), SIL)
        for v, start, end in zip(visemes, bounds, bounds[1:]):
            shape = SHAPES[v] * weight
            if v in LIP_NEUTRAL and vowel != SIL:
                shape[_LIPS] += LIP_BORROW * SHAPES[PHONE_VISEMES[vowel][0]][_LIPS]
            out.append(_Segment(start, end, v, shape))
    return out


def _anticipate(segments: list[_Segment]) -> list[_Segment]:
    """Move each onset ANTICIPATION_S earlier, taking at most half of the segment before it.

    Pauses are not anticipated: the mouth relaxes after the sound stops, not before.
    """
    out = list(segments)
    for k in range(1, len(out)):
        if out[k].viseme == "sil":
            continue
        lead = min(ANTICIPATION_S, 0.5 * (segments[k - 1].end_s - segments[k - 1].start_s))
        out[k - 1] = replace(out[k - 1], end_s=out[k - 1].end_s - lead)
        out[k] = replace(out[k], start_s=out[k].start_s - lead)
    return out


def mouth_targets(phones: Sequence[Phone], num_frames: int) -> np.ndarray:
    """(num_frames, spec.D) float32 motion: mouth and jaw follow the phones, everything else neutral."""
    segments = _segments(phones)
    span_s = max([num_frames / FPS] + [seg.end_s for seg in segments])
    track = np.zeros((int(np.ceil(span_s * GRID_HZ)) + 1, spec.D), np.float32)
    for seg in _anticipate(segments):
        track[max(round(seg.start_s * GRID_HZ), 0) : max(round(seg.end_s * GRID_HZ), 0)] = seg.shape
    track = gaussian_filter1d(track, SMOOTHING_S * GRID_HZ, axis=0, mode="nearest")
    centres = (np.arange(num_frames) + 0.5) / FPS
    out = track[np.round(centres * GRID_HZ).astype(int)]
    # Closures use the acoustic (not anticipated) span: the lips part at the burst, not 40 ms before it.
    for seg in (seg for seg in segments if seg.viseme == "PP"):
        half = max(CLOSURE_SHARE * (seg.end_s - seg.start_s) / 2, CLOSURE_MIN_HALF_S)
        distance = np.abs(centres - (seg.start_s + seg.end_s) / 2)
        closure = np.clip(1 - (distance - half) / CLOSURE_FADE_S, 0, 1)[:, None]
        out[:, _OPENING] *= 1 - closure
        out[:, _CLOSING] = np.maximum(out[:, _CLOSING], closure * seg.shape[_CLOSING])
    return spec.clip(spec.NEUTRAL + out)
