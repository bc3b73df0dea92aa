"""Real human speech available offline, gathered into one evaluation folder (`avatar data human`).

Two sources, neither downloaded from a dataset site:
- the alsa-utils voice prompts (Debian package alsa-utils, /usr/share/sounds/alsa): eight short
  phrases ("Front Center", ...) read by one speaker; the transcript is the file name;
- pocketsphinx's own test recordings, inside its source distribution on PyPI (fetched with
  `pip download`): cards/001-005 (transcripts shipped with them), goforward, something and numbers
  (no transcripts ship with these three: ours are pocketsphinx's own decoding of them, verbatim, so
  "numbers" may hold a recognition error; the aligner is then at worst slightly off in places).
pocketsphinx's librivox excerpts (connected read speech, five sentences of "Sense and
Sensibility", transcripts shipped with them) are gathered only with --held-out, into a folder of
their own: they stay unseen while the generator is developed and serve as the final held-out check.

Writes <stem>.wav (16 kHz mono) and <stem>.txt per recording plus sources.json.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.audio.io import load_audio
from engine.errors import UserError

ALSA_DIR = Path("/usr/share/sounds/alsa")
POCKETSPHINX_SDIST = "pocketsphinx==5.1.1"
TESTDATA = {  # path inside the sdist's test/data -> transcript (None: read from cards.transcription)
    "cards/001.wav": None, "cards/002.wav": None, "cards/003.wav": None, "cards/004.wav": None,
    "cards/005.wav": None,
    "goforward.raw": "go forward ten meters",
    "something.raw": "go somewhere and do something",
    "numbers.raw": "thirty three four or six ninety two",
}
LIBRIVOX = {f"librivox/sense_and_sensibility_01_austen_64kb-{n:04d}.wav": None for n in (870, 880, 890, 920, 930)}


def _write_wav(path: Path, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes())


def _alsa(out: Path) -> list[dict]:
    if not ALSA_DIR.is_dir():
        print(f"warning: {ALSA_DIR} not found (apt-get install alsa-utils); skipping the alsa prompts", file=sys.stderr)
        return []
    rows = []
    for path in sorted(ALSA_DIR.glob("*.wav")):
        if path.stem == "Noise":
            continue  # no speech in it
        text = " ".join(path.stem.lower().split("_"))
        stem = f"alsa_{path.stem.lower()}"
        _write_wav(out / f"{stem}.wav", load_audio(path))
        (out / f"{stem}.txt").write_text(text + "\n")
        rows.append({"file": f"{stem}.wav", "source": str(path), "transcript": text})
    return rows


def _pocketsphinx(out: Path, recordings: dict[str, str | None]) -> list[dict]:
    """`recordings` (path under the sdist's test/data -> transcript; None: cards.transcription or <stem>.txt)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", tmp,
               POCKETSPHINX_SDIST]
        done = subprocess.run(cmd, capture_output=True, text=True)
        archives = list(Path(tmp).glob("pocketsphinx-*.tar.gz"))
        if done.returncode or not archives:
            print(f"warning: could not fetch the {POCKETSPHINX_SDIST} source distribution "
                  f"({done.stderr.strip().splitlines()[-1:] or 'no archive'}); skipping its recordings",
                  file=sys.stderr)
            return []
        with tarfile.open(archives[0]) as tar:
            root = tar.getnames()[0].split("/")[0]
            names = [*recordings, "cards/cards.transcription"]
            names += [n.rsplit(".", 1)[0] + ".txt" for n in recordings if n.startswith("librivox/")]
            members = {name: tar.extractfile(f"{root}/test/data/{name}").read() for name in names}
    cards = {}
    for line in members["cards/cards.transcription"].decode().splitlines():
        match = re.match(r"<s>(.*)</s>\s*\((\w+)\)", line.strip())
        if match:
            cards[match.group(2)] = " ".join(match.group(1).split())
    rows = []
    for name, text in recordings.items():
        data, stem = members[name], Path(name).stem
        if name.endswith(".raw"):  # headerless 16 kHz mono s16le
            samples = np.frombuffer(data, np.int16).astype(np.float32) / 32768
        else:
            with tempfile.NamedTemporaryFile(suffix=".wav") as f:
                f.write(data)
                f.flush()
                samples = load_audio(f.name)
        text = text or cards.get(stem) or members[name.rsplit(".", 1)[0] + ".txt"].decode().strip()
        stem = f"pocketsphinx_{name.replace('/', '_').rsplit('.', 1)[0]}"
        _write_wav(out / f"{stem}.wav", samples)
        (out / f"{stem}.txt").write_text(text + "\n")
        rows.append({"file": f"{stem}.wav", "source": f"{POCKETSPHINX_SDIST} sdist test/data/{name}",
                     "transcript": text})
    return rows


def gather(out: str | Path, held_out: bool = False) -> list[dict]:
    """Write every available recording with its transcript into `out` (held_out: only the librivox
    excerpts); returns what was written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = _pocketsphinx(out, LIBRIVOX) if held_out else _alsa(out) + _pocketsphinx(out, TESTDATA)
    if not rows:
        raise UserError("no human recordings could be gathered: install alsa-utils (apt-get install alsa-utils) "
                        "or allow pip to reach PyPI for the pocketsphinx source distribution")
    (out / "sources.json").write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="avatar data human", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Then: avatar eval lipsync --audio-dir DIR")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the recordings into")
    parser.add_argument("--held-out", action="store_true", help="gather only the librivox excerpts (connected "
                        "read speech), the final held-out check: score on them, never tune on them")
    args = parser.parse_args(argv)
    rows = gather(args.out, args.held_out)
    print(f"wrote {len(rows)} recordings with transcripts to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
