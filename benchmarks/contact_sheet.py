"""Contact sheet of the renderer: labelled frames for key poses, plus mouth and eye close-ups.

    python benchmarks/contact_sheet.py [--portrait photo.jpg] [--out benchmarks/results/contact_sheet.png]

Default portrait: the bundled one (engine.assets.DEFAULT_PORTRAIT) when present, else the
astronaut's head and shoulders from scikit-image. Frames are rendered at 512 px; the grid
shows them at half size, the close-ups at twice the native size (nearest neighbour, so
every rendered pixel is visible).
"""

from __future__ import annotations

import argparse
import time
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
    ("smile", {"mouthSmile_L": 1.0, "mouthSmile_R": 1.0}),
    ("smile + jaw 0.4", {"mouthSmile_L": 0.8, "mouthSmile_R": 0.8, "jawOpen": 0.4}),
    ("funnel + jaw 0.3", {"mouthFunnel": 1.0, "jawOpen": 0.3}),
    ("pucker", {"mouthPucker": 1.0}),
    ("blink 0.5", {"eyeBlink_L": 0.5, "eyeBlink_R": 0.5}),
    ("blink 1.0", {"eyeBlink_L": 1.0, "eyeBlink_R": 1.0}),
    ("brows up", {"browInnerUp": 1.0, "browOuterUp_L": 1.0, "browOuterUp_R": 1.0}),
    ("brows down + squint", {"browDown_L": 1.0, "browDown_R": 1.0, "eyeSquint_L": 0.7, "eyeSquint_R": 0.7}),
    ("yaw +0.25", {"headYaw": 0.25}),
    ("yaw -0.25 + jaw 0.5", {"headYaw": -0.25, "jawOpen": 0.5}),
    ("pitch +0.2 + jaw 0.5", {"headPitch": 0.2, "jawOpen": 0.5}),
    ("roll 0.15 + smile", {"headRoll": 0.15, "mouthSmile_L": 0.6, "mouthSmile_R": 0.6}),
]
MOUTH_CLOSE_UPS = ["jawOpen 0.2", "jawOpen 0.5", "jawOpen 0.9", "smile + jaw 0.4", "funnel + jaw 0.3"]
EYE_CLOSE_UPS = ["rest", "blink 0.5", "blink 1.0"]


def default_portrait() -> np.ndarray:
    try:
        from engine.assets import DEFAULT_PORTRAIT

        if Path(DEFAULT_PORTRAIT).is_file():
            return load_image(DEFAULT_PORTRAIT)
    except ImportError:
        pass
    from skimage import data

    return cv2.resize(data.astronaut()[0:300, 75:375], (512, 512), interpolation=cv2.INTER_CUBIC)


def label(image: np.ndarray, text: str) -> np.ndarray:
    out = image.copy()
    cv2.rectangle(out, (0, 0), (out.shape[1], 18), (0, 0, 0), -1)
    cv2.putText(out, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def grid(tiles: list[np.ndarray], columns: int) -> np.ndarray:
    blank = np.zeros_like(tiles[0])
    tiles = tiles + [blank] * (-len(tiles) % columns)
    return np.concatenate([np.concatenate(tiles[i : i + columns], 1) for i in range(0, len(tiles), columns)], 0)


def crop(frame: np.ndarray, centre: np.ndarray, half_w: int, half_h: int, zoom: int) -> np.ndarray:
    x, y = np.round(centre).astype(int)
    size = frame.shape[0]
    x, y = np.clip(x, half_w, size - half_w), np.clip(y, half_h, size - half_h)
    part = frame[y - half_h : y + half_h, x - half_w : x + half_w]
    return cv2.resize(part, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--portrait", type=Path, help="photo to animate (default: the bundled portrait)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "contact_sheet.png")
    args = parser.parse_args()

    photo = load_image(args.portrait) if args.portrait else default_portrait()
    start = time.perf_counter()
    rig = Rig(analyze_portrait(photo, size=512))
    renderer = Renderer(rig).eval()
    setup = time.perf_counter() - start
    coeffs = torch.from_numpy(np.stack([spec.from_dict(values) for _, values in POSES]))
    with torch.inference_mode():
        frames = dict(zip([name for name, _ in POSES], renderer.frames(coeffs)))

    half = [label(cv2.resize(f, (256, 256), interpolation=cv2.INTER_AREA), name) for name, f in frames.items()]
    sheet = grid(half, 4)
    width = sheet.shape[1]

    lips = np.r_[rig.groups["outer_lip_upper"], rig.groups["outer_lip_lower"]]
    mouth_centre, mw = rig.points[lips].mean(0), int(0.42 * rig.face_width)
    mouths = [label(crop(frames[n], mouth_centre + [0, 0.06 * rig.face_width], mw, int(0.6 * mw), 2), n)
              for n in MOUTH_CLOSE_UPS]
    eyes_idx = np.r_[rig.groups["eye_left_upper"], rig.groups["eye_right_upper"]]
    eye_centre, ew = rig.points[eyes_idx].mean(0), int(0.5 * rig.face_width)
    eyes = [label(crop(frames[n], eye_centre, ew, int(0.25 * ew), 2), n) for n in EYE_CLOSE_UPS]
    rows = [sheet]
    for strip in (np.concatenate(mouths, 1), np.concatenate(eyes, 1)):
        scale = min(1.0, width / strip.shape[1])
        strip = cv2.resize(strip, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else strip
        rows.append(np.pad(strip, ((4, 0), (0, width - strip.shape[1]), (0, 0))))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out} ({len(POSES)} poses; portrait analysis + rig + renderer set-up {setup:.1f} s)")


if __name__ == "__main__":
    main()
