"""Mouth contact sheet: the poses that show the mouth, at 1x and 3x around the mouth, before and after.

    python benchmarks/mouth_sheet.py --save-frames before.npz            # on the old renderer
    python benchmarks/mouth_sheet.py --before before.npz                 # on the new one: side by side

For each portrait (the bundled one and matplotlib's grace_hopper.jpg) it writes
benchmarks/results/mouth_sheet_<name>.png: one row per pose, each row the whole face at 1x,
then the mouth at 3x (nearest neighbour, every rendered pixel visible), before | after when
`--before` frames are given. Frames come from `Renderer.frames` (the uint8 CPU path users see).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from engine.face.analysis import analyze_portrait, load_image
from engine.face.rig import Rig
from engine.motion import spec
from engine.render.renderer import Renderer

POSES: list[tuple[str, dict[str, float]]] = [
    ("rest", {}),
    ("jawOpen 0.2", {"jawOpen": 0.2}),
    ("jawOpen 0.5", {"jawOpen": 0.5}),
    ("jawOpen 0.9", {"jawOpen": 0.9}),
    ("funnel + jaw 0.3", {"mouthFunnel": 1.0, "jawOpen": 0.3}),
    ("pucker", {"mouthPucker": 1.0}),
    ("pucker + jaw 0.3", {"mouthPucker": 0.8, "jawOpen": 0.3}),
    ("smile + jaw 0.4", {"mouthSmile_L": 0.8, "mouthSmile_R": 0.8, "jawOpen": 0.4}),
    ("stretch + jaw 0.5", {"mouthStretch_L": 0.8, "mouthStretch_R": 0.8, "jawOpen": 0.5}),
    ("bilabial (jaw 0.3 + close 0.3)", {"jawOpen": 0.3, "mouthClose": 0.3}),
    ("blink", {"eyeBlink_L": 1.0, "eyeBlink_R": 1.0}),
]


def portraits() -> dict[str, np.ndarray]:
    from matplotlib import cbook

    from engine.assets import DEFAULT_PORTRAIT

    return {"portrait": load_image(DEFAULT_PORTRAIT),
            "grace_hopper": load_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))}


def label(image: np.ndarray, text: str) -> np.ndarray:
    out = image.copy()
    cv2.rectangle(out, (0, 0), (out.shape[1], 16), (0, 0, 0), -1)
    cv2.putText(out, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def mouth_crop(frame: np.ndarray, rig: Rig, zoom: int) -> np.ndarray:
    """The mouth and chin, `zoom` x nearest neighbour."""
    lips = np.r_[rig.groups["outer_lip_upper"], rig.groups["outer_lip_lower"]]
    x, y = np.round(rig.points[lips].mean(0) + [0, 0.05 * rig.face_width]).astype(int)
    hw, hh = int(0.3 * rig.face_width), int(0.2 * rig.face_width)
    part = frame[max(y - hh, 0):y + hh, max(x - hw, 0):x + hw]
    return cv2.resize(part, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)


def face_crop(frame: np.ndarray, rig: Rig) -> np.ndarray:
    """The lower two thirds of the face at 1x."""
    oval = rig.points[rig.groups["face_oval"]]
    (x0, y0), (x1, y1) = oval.min(0).astype(int), oval.max(0).astype(int)
    y0 = (y0 + y1) // 2 - (y1 - y0) // 6
    return frame[max(y0, 0):y1 + 10, max(x0 - 10, 0):x1 + 10]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--save-frames", type=Path, help="also write the rendered frames here (.npz)")
    parser.add_argument("--before", type=Path, help="frames saved by --save-frames from the old renderer")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    before = dict(np.load(args.before)) if args.before else {}
    saved = {}
    coeffs = torch.from_numpy(np.stack([spec.from_dict(values) for _, values in POSES]))
    for name, photo in portraits().items():
        rig = Rig(analyze_portrait(photo, size=512))
        with torch.inference_mode():
            frames = Renderer(rig).eval().frames(coeffs)
        saved[name] = frames
        rows = []
        for i, (pose, _) in enumerate(POSES):
            tiles = []
            versions = ([("before", before[name][i])] if name in before else []) + [("after", frames[i])]
            for tag, f in versions:
                tiles += [label(face_crop(f, rig), f"{pose} ({tag})"), label(mouth_crop(f, rig, 3), f"3x {tag}")]
            height = max(t.shape[0] for t in tiles)
            rows.append(np.concatenate([np.pad(t, ((0, height - t.shape[0]), (0, 4), (0, 0))) for t in tiles], 1))
        width = max(r.shape[1] for r in rows)
        sheet = np.concatenate([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows], 0)
        out = args.out_dir / f"mouth_sheet_{name}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        print(f"wrote {out}")
    if args.save_frames:
        np.savez_compressed(args.save_frames, **saved)


if __name__ == "__main__":
    main()
