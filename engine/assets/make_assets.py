"""Make the bundled default assets and their manifest: `python -m engine.assets.make_assets [--out DIR]`.

portrait.png: scikit-image's astronaut photo (public domain, NASA), cropped to head, hair and shoulders.
speech.wav: three short sentences spoken by festival's cmu_us_slt_arctic_hts voice, with silent pauses
between them so the avatar visibly closes its mouth. Same tools in, same bytes out.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from engine.io import sha256_file
from engine.timebase import SAMPLE_RATE

PORTRAIT_BOX = (89, 5, 272)  # left, top, side in the 512x512 astronaut: hair and shoulders in, face a little above centre
PORTRAIT_SIZE = 512
VOICE = "cmu_us_slt_arctic_hts"  # festival's most natural offline English voice (Debian festvox-us-slt-hts)
VOICE_PACKAGE = "festvox-us-slt-hts"
SENTENCES = (
    "Hello! I am a photo that learned to speak.",
    "Watch my lips follow every word.",
    "In the pauses, my mouth rests.",
)
EDGE_SILENCE_S = 0.5  # before the first and after the last sentence
GAP_S = 0.8  # between sentences: long enough for the mouth to close visibly
TRIM_DB = -40.0  # festival's own leading/trailing silence is cut below this level (relative to the sentence peak)
PEAK_DBFS = -3.0


def dpkg_version(package: str) -> str:
    """Debian package version, or "unknown" off Debian (recorded, never required)."""
    if shutil.which("dpkg-query") is None:
        return "unknown"
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def make_portrait(out_dir: Path) -> dict:
    import cv2
    import skimage
    from skimage import data

    left, top, side = PORTRAIT_BOX
    crop = data.astronaut()[top : top + side, left : left + side]
    portrait = cv2.resize(crop, (PORTRAIT_SIZE, PORTRAIT_SIZE), interpolation=cv2.INTER_LANCZOS4)
    path = out_dir / "portrait.png"
    cv2.imwrite(str(path), cv2.cvtColor(portrait, cv2.COLOR_RGB2BGR))
    return {
        "source": "skimage.data.astronaut(): NASA portrait of astronaut Eileen Collins, shipped in the scikit-image wheel",
        "licence": "public domain (work of the US federal government, NASA)",
        "processing": f"crop x {left}:{left + side}, y {top}:{top + side} of the 512x512 original, "
                      f"resize to {PORTRAIT_SIZE}x{PORTRAIT_SIZE} with cv2.INTER_LANCZOS4",
        "tools": {"scikit-image": skimage.__version__, "opencv-python-headless": cv2.__version__},
        "sha256": sha256_file(path),
    }


def synthesize(text: str, workdir: Path) -> tuple[list[str], np.ndarray]:
    """(the command that ran, int16 samples at SAMPLE_RATE) for one sentence, text on stdin."""
    command = ["text2wave", "-eval", f"(voice_{VOICE})", "-F", str(SAMPLE_RATE), "-o", "sentence.wav"]
    result = subprocess.run(command, input=text + "\n", text=True, capture_output=True, cwd=workdir)
    if result.returncode != 0:
        raise RuntimeError(f"festival could not speak {text!r}: {result.stderr.strip()}; "
                           f"install the voice with `apt-get install festival {VOICE_PACKAGE}`")
    with wave.open(str(workdir / "sentence.wav")) as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (SAMPLE_RATE, 1, 2):
            raise RuntimeError(f"text2wave wrote {w.getframerate()} Hz x{w.getnchannels()}, expected {SAMPLE_RATE} Hz mono")
        return command, np.frombuffer(w.readframes(w.getnframes()), np.int16)



def trim(samples: np.ndarray) -> np.ndarray:
    """Cut the synthesizer's own silence so the pauses are exactly the ones written here."""
    loud = np.flatnonzero(np.abs(samples.astype(np.float64)) > np.abs(samples).max() * 10 ** (TRIM_DB / 20))
    return samples[loud[0] : loud[-1] + 1]


def make_speech(out_dir: Path) -> dict:
    if shutil.which("text2wave") is None:
        raise RuntimeError(f"festival's text2wave is not installed; run `apt-get install festival {VOICE_PACKAGE}`")
    edge, gap = np.zeros(round(EDGE_SILENCE_S * SAMPLE_RATE)), np.zeros(round(GAP_S * SAMPLE_RATE))
    pieces, commands = [edge], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(SENTENCES):
            command, samples = synthesize(text, Path(tmp))
            commands.append(f"echo {shlex.quote(text)} | {shlex.join(command)}")
            pieces += [gap] * (i > 0) + [trim(samples).astype(np.float64)]
    speech = np.concatenate(pieces + [edge])
    speech *= 10 ** (PEAK_DBFS / 20) * 32767 / np.abs(speech).max()
    path = out_dir / "speech.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(SAMPLE_RATE)
        w.writeframes(np.round(speech).astype("<i2").tobytes())
    festival = subprocess.run(["festival", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "source": f"synthesized offline by festival with the {VOICE} voice (Debian {VOICE_PACKAGE})",
        "licence": "CMU ARCTIC / HTS voice licence (permissive, attribution kept: EST-2000/EST-2003 and "
                   f"BSD-3-clause, see /usr/share/doc/{VOICE_PACKAGE}/copyright); the text is this project's own",
        "text": list(SENTENCES),
        "commands": commands,
        "processing": f"each sentence trimmed at {TRIM_DB:g} dB below its peak, joined with {GAP_S:g} s of silence, "
                      f"{EDGE_SILENCE_S:g} s of silence at both ends, normalized to {PEAK_DBFS:g} dBFS peak, "
                      f"{SAMPLE_RATE} Hz mono 16-bit",
        "tools": {"festival": festival, "festival-deb": dpkg_version("festival"), VOICE_PACKAGE: dpkg_version(VOICE_PACKAGE)},
        "seconds": len(speech) / SAMPLE_RATE,
        "sha256": sha256_file(path),
    }


def make_assets(out_dir: Path) -> dict:
    """Write portrait.png, speech.wav and manifest.json into `out_dir`; return the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "command": "python -m engine.assets.make_assets",
        "portrait.png": make_portrait(out_dir),
        "speech.wav": make_speech(out_dir),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent,
                        help="folder to write into (default: the bundled engine/assets)")
    args = parser.parse_args(argv)
    for name, entry in make_assets(args.out).items():
        if isinstance(entry, dict):
            print(f"wrote {args.out / name}  sha256 {entry['sha256'][:12]}")


if __name__ == "__main__":
    main()
