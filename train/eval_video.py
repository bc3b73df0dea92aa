"""Lip sync as a viewer sees it: the mouth measured in the rendered video (`avatar eval lipsync --rendered`).

Each recording is driven (learned, fast, baseline), rendered with the shipped renderer on a portrait,
and every output frame goes through mediapipe FaceMesh (static mode: each frame on its own, no
tracker smoothing). The mouth opening of a frame is the inner-lip gap (landmarks 13-14) over the
outer-eye-corner distance (33-263). It is compared with a reference built from the transcript,
force-aligned by pocketsphinx, on the *acoustic* phone boundaries: each phone class gets an opening
(`PHONE_OPENING`, a table of this module's own, not the corpus's viseme mapping, and with no
anticipatory lead), smoothed by a Gaussian of REFERENCE_SMOOTHING_S (~60 ms wide). Per recording:
- r at lag 0 and the best lag within +-200 ms (positive: the mouth moves after the sound) with r there;
- bilabial: the opening on frames in the middle of p/b/m over the mean opening of speech frames
  (a real mouth closes: well under 1);
- silence: the opening in pauses (frames 0.2 s or more from any speech) over the speech mean;
- roughness: std of the opening's second difference over its std, relative to the reference's
  (1 = as smooth as speech; a mouth that pops open for a frame or two scores high);
- roughness against the rendered reference: the same, relative to the reference rendered and read alike
  (`roughness_rendered`), which cancels FaceMesh's own reading noise (the plain one reads a mouth that is the
  reference exactly as ~1.6x).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d

from engine.audio.frontend import AudioFeatures
from engine.face.analysis import detect_landmarks
from engine.motion import spec
from engine.render.renderer import Renderer
from engine.timebase import FPS
from train.eval_lipsync import MAX_LAG, lagged_r
from train.synth.phones import SIL, Phone

REFERENCE_SMOOTHING_S = 0.025  # Gaussian std: ~60 ms wide
PAUSE_MARGIN_S = 0.2  # a pause frame is this far from any speech
BATCH = 4  # frames per renderer call
UPPER_INNER, LOWER_INNER, EYE_R, EYE_L = 13, 14, 33, 263  # FaceMesh landmark indices

# Opening per ARPAbet phone (0 closed .. 1 wide open): open vowels widest, rounded and close vowels
# less, bilabials shut, labiodentals nearly shut, other consonants slightly open.
_OPEN, _MID, _CLOSE = ("AA", "AE", "AH", "AO", "AW", "AY"), ("EH", "ER", "EY", "OW", "OY", "UH"), ("IH", "IY", "UW")
PHONE_OPENING = {**{p: 1.0 for p in _OPEN}, **{p: 0.7 for p in _MID}, **{p: 0.4 for p in _CLOSE},
                 "P": 0.0, "B": 0.0, "M": 0.0, "F": 0.15, "V": 0.15, "HH": 0.5, SIL: 0.0}
CONSONANT_OPENING = 0.3  # every other phone (t, d, k, s, n, l, r, w, y, ...)
BILABIALS = ("P", "B", "M")


def reference_opening(phones: Sequence[Phone], frames: int) -> np.ndarray:
    """(frames,) opening on the phones' acoustic boundaries, sampled at the 25 fps frame centres."""
    grid = 200  # Hz
    track = np.zeros(int(np.ceil(max([frames / FPS] + [p.end_s for p in phones]) * grid)) + 1)
    for p in phones:
        track[round(p.start_s * grid): round(p.end_s * grid)] = PHONE_OPENING.get(p.arpabet, CONSONANT_OPENING)
    track = gaussian_filter1d(track, REFERENCE_SMOOTHING_S * grid, mode="nearest")
    return track[np.round((np.arange(frames) + 0.5) / FPS * grid).astype(int)]


def measure_opening(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames -> (T,) inner-lip gap over eye distance (NaN where no face was found)."""
    out = np.full(len(frames), np.nan)
    for i, frame in enumerate(frames):
        faces = detect_landmarks(frame)
        if faces:
            pts = max(faces, key=lambda f: np.ptp(f[:, 0]))[:, :2]
            out[i] = np.linalg.norm(pts[UPPER_INNER] - pts[LOWER_INNER]) / np.linalg.norm(pts[EYE_R] - pts[EYE_L])
    return out


@torch.inference_mode()
def render(renderer: Renderer, motion: np.ndarray) -> np.ndarray:
    """(T, D) raw motion -> (T, S, S, 3) uint8 frames, as `avatar render` makes them."""
    return np.concatenate([renderer.frames(torch.from_numpy(motion[s: s + BATCH]))
                           for s in range(0, len(motion), BATCH)])


def roughness(x: np.ndarray) -> float:
    """std of the second difference over the std: how much a track pops frame to frame."""
    return float(np.std(np.diff(x, 2)) / max(np.std(x), 1e-9))


def _frame_mask(phones: Sequence[Phone], frames: int, keep: Callable[[Phone], bool], shrink: float = 0.0
                ) -> np.ndarray:
    """Frames whose centre lies inside a kept phone, its span shrunk by `shrink` of its length at both ends."""
    centres = (np.arange(frames) + 0.5) / FPS
    mask = np.zeros(frames, bool)
    for p in (p for p in phones if keep(p)):
        pad = shrink * (p.end_s - p.start_s)
        mask |= (centres >= p.start_s + pad) & (centres < p.end_s - pad)
    return mask


def speech_frames(phones: Sequence[Phone], frames: int) -> np.ndarray:
    """(frames,) bool: the frames whose centre lies inside a phone that is not silence."""
    return _frame_mask(phones, frames, lambda p: p.arpabet != SIL)


@dataclass(frozen=True)
class VideoScore:
    recording: str
    driver: str
    seconds: float
    r: float  # Pearson r of the measured opening with the reference at lag 0
    lag_ms: float  # lag of the best r within +-200 ms (positive: the mouth trails the sound)
    best_r: float
    bilabial: float  # opening in the middle of p/b/m over the speech mean (NaN without bilabials)
    silence: float  # opening in pauses over the speech mean (NaN without pauses)
    roughness: float  # the opening's roughness over the reference's
    faces_found: float  # share of frames where FaceMesh found the face
    roughness_rendered: float = float("nan")  # roughness over the reference's rendered and read alike


def filled(opening: np.ndarray) -> np.ndarray:
    """A measured opening track with the frames where no face was found interpolated from their neighbours."""
    found = np.isfinite(opening)
    idx = np.arange(len(opening))
    return np.interp(idx, idx[found], opening[found])


def reference_motion(motion: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(T, D) motion with its mouth replaced by the phone reference's opening at the motion's own opening mean and
    std (jawOpen; the other jaw and mouth channels held at their means): what the same renderer and FaceMesh make
    of a mouth exactly as smooth as the reference, under the same head, eyes and width. FaceMesh reads a smooth
    rendered mouth 20-45 % rougher than its geometry, so a roughness against the unrendered reference carries that
    bias; against this one's, rendered and read the same way, it cancels."""
    jaw, close = spec.index("jawOpen"), spec.index("mouthClose")
    lips = [i for i, c in enumerate(spec.COEFFS) if c.group in ("jaw", "mouth")]
    opening = np.clip(motion[:, jaw] - motion[:, close], 0, None)
    out = motion.copy()
    out[:, lips] = motion[:, lips].mean(0)
    out[:, close] = 0.0
    z = (reference - reference.mean()) / max(float(reference.std()), 1e-9)
    out[:, jaw] = np.clip(opening.mean() + opening.std() * z, 0.0, 1.0)
    return out


def roughness_rendered(renderer: Renderer, motion: np.ndarray, opening: np.ndarray, reference: np.ndarray) -> float:
    """The measured opening's roughness over that of reference_motion(motion, reference), rendered and read by
    FaceMesh the same way (NaN where either has a face in fewer than 3 frames)."""
    seen = measure_opening(render(renderer, reference_motion(motion, reference)))
    if min(np.isfinite(opening).sum(), np.isfinite(seen).sum()) < 3:
        return float("nan")
    return roughness(filled(opening)) / roughness(filled(seen))


def score_video(name: str, driver: str, opening: np.ndarray, phones: Sequence[Phone], reference: np.ndarray
                ) -> VideoScore:
    """Compare a measured opening track with the reference (frames where no face was found are filled in)."""
    found = np.isfinite(opening)
    if found.sum() < 3:
        nan = float("nan")
        return VideoScore(name, driver, len(opening) / FPS, nan, nan, nan, nan, nan, nan, float(found.mean()))
    track = filled(opening)
    r0, lag, best = lagged_r(track, reference, MAX_LAG)
    speech = speech_frames(phones, len(track))
    bilabial = _frame_mask(phones, len(track), lambda p: p.arpabet in BILABIALS, shrink=0.25)
    margin = round(PAUSE_MARGIN_S * FPS)
    pause = np.convolve(speech, np.ones(2 * margin + 1), mode="same") == 0  # no speech within the margin
    mean_speech = track[speech].mean() if speech.any() else float("nan")
    return VideoScore(
        name, driver, len(track) / FPS, r0, 1000 * lag / FPS, best,
        float(track[bilabial].mean() / mean_speech) if bilabial.any() else float("nan"),
        float(track[pause].mean() / mean_speech) if pause.any() else float("nan"),
        roughness(track) / roughness(reference), float(found.mean()),
    )


def evaluate_rendered(items: Sequence[tuple[str, AudioFeatures, Sequence[Phone]]],
                      drivers: dict[str, Callable[[AudioFeatures], np.ndarray]], renderer: Renderer,
                      progress: Callable = lambda x, **_: x) -> list[VideoScore]:
    """Render every (name, features, phones) item with every driver and score what FaceMesh sees (each motion
    rendered twice: as driven, and with its mouth driven by the reference for `roughness_rendered`)."""
    scores = []
    for name, features, phones in progress(items, desc="recordings (rendered)", leave=False):
        reference = reference_opening(phones, len(features))
        for driver, drive in drivers.items():
            motion = drive(features)
            opening = measure_opening(render(renderer, motion))
            scores.append(replace(score_video(name, driver, opening, phones, reference),
                                  roughness_rendered=roughness_rendered(renderer, motion, opening, reference)))
    return scores


def summary(scores: Sequence[VideoScore]) -> dict[str, dict[str, float]]:
    """Per driver: the median of each measure over recordings (NaNs left out)."""
    out = {}
    for driver in dict.fromkeys(s.driver for s in scores):
        rows = [s for s in scores if s.driver == driver]
        med = {k: float(np.nanmedian([getattr(s, k) for s in rows])) for k in
               ("r", "lag_ms", "best_r", "bilabial", "silence", "roughness", "roughness_rendered", "faces_found")}
        out[driver] = {"recordings": len(rows), **med, "min_r": float(np.nanmin([s.r for s in rows])),
                       "max_r": float(np.nanmax([s.r for s in rows]))}
    return out


def markdown(title: str, scores: Sequence[VideoScore]) -> str:
    lines = [f"### {title}", "",
             ("| driver | recordings | r at lag 0 (min-max) | best lag | r at best lag | lips on p/b/m | pauses | "
              "roughness | roughness against the rendered reference | faces found |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for driver, s in summary(scores).items():
        lines.append(f"| {driver} | {s['recordings']} | {s['r']:.2f} ({s['min_r']:.2f}-{s['max_r']:.2f}) | "
                     f"{s['lag_ms']:+.0f} ms | {s['best_r']:.2f} | {s['bilabial']:.2f}x | {s['silence']:.2f}x | "
                     f"{s['roughness']:.2f}x | {s['roughness_rendered']:.2f}x | {100 * s['faces_found']:.0f}% |")
    lines += ["", "<details><summary>per recording</summary>", "",
              "| recording | driver | s | r | best lag | r at best lag | p/b/m | pauses | roughness | rendered ref |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {s.recording} | {s.driver} | {s.seconds:.1f} | {s.r:.2f} | {s.lag_ms:+.0f} | {s.best_r:.2f} | "
              f"{s.bilabial:.2f} | {s.silence:.2f} | {s.roughness:.2f} | {s.roughness_rendered:.2f} |"
              for s in scores]
    return "\n".join(lines + ["", "</details>", ""])
