"""The motion space: one frame of motion is a vector of D named, bounded coefficients.

ARKit-named blendshape weights in [0, 1] followed by head pose. `_L`/`_R` follow ARKit:
the *subject's* left and right, so `eyeBlink_L` closes the eye on the image's right side
in a frontal photo. Head rotation is in radians (yaw turns toward the subject's left,
pitch nods down, roll tilts the top of the head toward the subject's left); translation
is in units of the face width; scale is a relative change (0 = unchanged).

Everything that stores or sends motion goes through this module, so a coefficient
stream can be edited, controlled or forwarded to a 3D engine by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.timebase import FPS


@dataclass(frozen=True)
class Coeff:
    name: str
    low: float
    high: float
    neutral: float = 0.0
    group: str = "face"  # face region (mouth, eyes, brows, cheeks, nose, jaw) or "head"


def _blendshapes(group: str, *names: str) -> list[Coeff]:
    return [Coeff(n, 0.0, 1.0, 0.0, group) for n in names]


COEFFS: tuple[Coeff, ...] = tuple(
    _blendshapes("jaw", "jawOpen", "jawLeft", "jawRight")
    + _blendshapes(
        "mouth",
        "mouthClose", "mouthFunnel", "mouthPucker", "mouthLeft", "mouthRight",
        "mouthSmile_L", "mouthSmile_R", "mouthFrown_L", "mouthFrown_R",
        "mouthStretch_L", "mouthStretch_R", "mouthRollLower", "mouthRollUpper",
        "mouthShrugLower", "mouthShrugUpper", "mouthPress_L", "mouthPress_R",
        "mouthLowerDown_L", "mouthLowerDown_R", "mouthUpperUp_L", "mouthUpperUp_R",
    )
    + _blendshapes("eyes", "eyeBlink_L", "eyeBlink_R", "eyeSquint_L", "eyeSquint_R", "eyeWide_L", "eyeWide_R")
    + _blendshapes("brows", "browDown_L", "browDown_R", "browInnerUp", "browOuterUp_L", "browOuterUp_R")
    + _blendshapes("cheeks", "cheekPuff", "cheekSquint_L", "cheekSquint_R")
    + _blendshapes("nose", "noseSneer_L", "noseSneer_R")
    + [
        Coeff("headYaw", -0.5, 0.5, 0.0, "head"),
        Coeff("headPitch", -0.5, 0.5, 0.0, "head"),
        Coeff("headRoll", -0.5, 0.5, 0.0, "head"),
        Coeff("headX", -0.3, 0.3, 0.0, "head"),
        Coeff("headY", -0.3, 0.3, 0.0, "head"),
        Coeff("headScale", -0.2, 0.2, 0.0, "head"),
    ]
)

NAMES: tuple[str, ...] = tuple(c.name for c in COEFFS)
D = len(COEFFS)
INDEX: dict[str, int] = {n: i for i, n in enumerate(NAMES)}
LOW = np.array([c.low for c in COEFFS], np.float32)
HIGH = np.array([c.high for c in COEFFS], np.float32)
NEUTRAL = np.array([c.neutral for c in COEFFS], np.float32)
BLENDSHAPES: tuple[str, ...] = tuple(c.name for c in COEFFS if c.group != "head")
HEAD: tuple[str, ...] = tuple(c.name for c in COEFFS if c.group == "head")

FORMAT = "avatar-motion"
VERSION = 1


def index(name: str) -> int:
    """Position of a coefficient, with a helpful error for a typo."""
    try:
        return INDEX[name]
    except KeyError:
        close = [n for n in NAMES if n.lower().startswith(name.lower()[:4])]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown motion coefficient {name!r}{hint} (see engine.motion.spec.NAMES)") from None


def neutral(frames: int | None = None) -> np.ndarray:
    """The rest pose: (D,) or (frames, D)."""
    return NEUTRAL.copy() if frames is None else np.tile(NEUTRAL, (frames, 1))


def clip(coeffs: np.ndarray) -> np.ndarray:
    """Clamp any (..., D) array into the coefficients' bounds."""
    return np.clip(coeffs, LOW, HIGH).astype(np.float32)


def from_dict(values: dict[str, float], base: np.ndarray | None = None) -> np.ndarray:
    """A (D,) vector from named values; unnamed coefficients keep `base` (default: neutral)."""
    out = neutral() if base is None else np.array(base, np.float32)
    for name, value in values.items():
        out[index(name)] = value
    return out


def to_dict(coeffs: np.ndarray) -> dict[str, float]:
    return {n: float(v) for n, v in zip(NAMES, coeffs)}


def normalize(coeffs: np.ndarray) -> np.ndarray:
    """Map raw coefficients to roughly [-1, 1] per dimension (what the generator learns in)."""
    return ((coeffs - (LOW + HIGH) / 2) / ((HIGH - LOW) / 2)).astype(np.float32)


def denormalize(x: np.ndarray) -> np.ndarray:
    return (x * ((HIGH - LOW) / 2) + (LOW + HIGH) / 2).astype(np.float32)


def _check(coeffs: np.ndarray) -> np.ndarray:
    coeffs = np.asarray(coeffs, np.float32)
    if coeffs.ndim != 2 or coeffs.shape[1] != D:
        raise ValueError(f"motion must be (frames, {D}) coefficients, got shape {coeffs.shape}")
    return coeffs


def save(path: str | Path, coeffs: np.ndarray, fps: int = FPS) -> None:
    """Write (frames, D) motion as JSON lines (.jsonl: a header line, then one line per frame) or .npz."""
    path, coeffs = Path(path), _check(coeffs)
    if path.suffix == ".npz":
        np.savez_compressed(path, coeffs=coeffs, names=np.array(NAMES), fps=fps, version=VERSION)
        return
    if path.suffix != ".jsonl":
        raise ValueError(f"{path}: motion files end in .jsonl or .npz")
    with path.open("w") as f:
        f.write(json.dumps({"format": FORMAT, "version": VERSION, "fps": fps, "names": NAMES}) + "\n")
        for pts, row in enumerate(coeffs):
            f.write(json.dumps({"pts": pts, "coeffs": [round(float(v), 5) for v in row]}) + "\n")


def load(path: str | Path) -> np.ndarray:
    """Read motion written by `save`; coefficients are matched by name, missing ones stay neutral."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path) as z:
            names, rows = [str(n) for n in z["names"]], z["coeffs"]
    elif path.suffix == ".jsonl":
        with path.open() as f:
            header = json.loads(f.readline())
            if header.get("format") != FORMAT:
                raise ValueError(f"{path} is not an {FORMAT} file (its first line should be the header)")
            names = header["names"]
            rows = np.array([json.loads(line)["coeffs"] for line in f if line.strip()], np.float32)
    else:
        raise ValueError(f"{path}: motion files end in .jsonl or .npz")
    out = neutral(len(rows))
    for j, name in enumerate(names):
        if name in INDEX:
            out[:, INDEX[name]] = rows[:, j]
    return out
