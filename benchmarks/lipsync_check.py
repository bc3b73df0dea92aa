"""Does the rendered mouth follow real human speech? Measured on the output video itself.

For each recording: render it with the bundled portrait, run FaceMesh on every output frame,
and correlate the measured inner-lip opening with the speech level per frame; also report
the lag (in ms) at which that correlation peaks, and how open the mouth is in pauses.
Human recordings available offline: the alsa-utils voice prompts (/usr/share/sounds/alsa).

    python benchmarks/lipsync_check.py [--audio-dir /usr/share/sounds/alsa] [--size 256] [--driver learned]
Writes benchmarks/results/lipsync_check_<driver>.md. (`avatar eval lipsync` is the finer check: it
scores the motion itself against forced-aligned phones; this one looks only at the pixels.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from engine.audio.io import load_audio
from engine.face.measure import face_openings, frame_energy_db
from engine.io.video import read_frames
from engine.motion.choice import Baseline, Learned
from engine.offline import RenderRequest, render_file
from engine.timebase import FPS, SAMPLES_PER_FRAME

RESULTS = Path(__file__).parent / "results"
MAX_LAG = 5  # frames either side


def check(audio: Path, size: int, driver: str, workdir: Path) -> dict:
    out = workdir / f"{audio.stem}.mp4"
    choice = Baseline() if driver == "baseline" else Learned(backend="torch")
    render_file(RenderRequest(audio=audio, out=out, size=size, driver=choice, progress=False))
    mouth = np.array([face_openings(f)[0] for f in read_frames(out)])
    energy = frame_energy_db(load_audio(audio), len(mouth), SAMPLES_PER_FRAME)
    ok = np.isfinite(mouth)
    lags = range(-MAX_LAG, MAX_LAG + 1)

    def corr(lag):  # lag > 0: the mouth moves after the sound
        m, e, k = np.roll(mouth, -lag), energy, np.roll(ok, -lag) & ok
        return np.corrcoef(m[k], e[k])[0, 1]

    rs = [corr(lag) for lag in lags]
    pause = energy < energy.max() - 40
    return {
        "file": audio.name, "seconds": len(mouth) / FPS, "detected": ok.mean(), "r": corr(0),
        "best_lag_ms": 1000 * list(lags)[int(np.nanargmax(rs))] / FPS,
        "pause_open": float(np.nanmedian(mouth[pause])) if pause.any() else float("nan"),
        "speech_open": float(np.nanpercentile(mouth[~pause], 75)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio-dir", type=Path, default=Path("/usr/share/sounds/alsa"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--driver", choices=("learned", "baseline"), default="learned")
    args = parser.parse_args()
    files = sorted(p for p in args.audio_dir.iterdir() if p.suffix in (".wav", ".flac", ".mp3", ".ogg")
                   and "Noise" not in p.name)
    if not files:
        sys.exit(f"no recordings in {args.audio_dir}; install alsa-utils or pass --audio-dir")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [check(f, args.size, args.driver, Path(tmp)) for f in files]
    lines = [
        f"# Lip-sync check on human speech (measured on the rendered video), {args.driver} driver", "",
        f"Command: `python {' '.join(sys.argv)}`", "",
        "Mouth opening = inner-lip gap / face width, measured by FaceMesh on each output frame.", "",
        "| recording | s | face found | r(opening, level) | best lag ms | opening in pauses | opening in speech (p75) |",
        "|---|---|---|---|---|---|---|",
        *(f"| {r['file']} | {r['seconds']:.1f} | {r['detected']:.0%} | {r['r']:.2f} | {r['best_lag_ms']:+.0f} | "
          f"{r['pause_open']:.3f} | {r['speech_open']:.3f} |" for r in rows),
        "", f"Median r = {np.median([r['r'] for r in rows]):.2f}; "
        f"median best lag = {np.median([r['best_lag_ms'] for r in rows]):+.0f} ms.",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"lipsync_check_{args.driver}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
